//! Handing memory the process no longer uses back to the system.
//!
//! glibc's allocator keeps what a program frees for its next allocations: after a large
//! piece of work (a sync of a large tenant, a long mail drain, an export loaded into the
//! cache) the idle daemon would otherwise keep the work's peak for the rest of its life.
//! [`trim`] asks it to return every whole free page (`malloc_trim(0)`, which also
//! releases free pages inside the heap, not only at its top). The daemon calls it after
//! every cycle, once SQLite has let go of its cached pages
//! ([`crate::store::Store::release_memory`]).
//!
//! `malloc_trim` cannot return what glibc's per-thread cache (tcache) holds: up to seven
//! freed chunks of each small size, kept for the thread's next allocations and never
//! handed back. After a sync of 100,000 mailboxes the daemon's thread cache held chunks
//! scattered over the ten megabytes the sync's heap had grown to, each keeping its page
//! resident: 0.8 MB more anonymous memory than before the sync, after the trim. With the
//! cache off it was 0.3 MB, and the idle daemon itself 0.2 MB smaller (its figures in the
//! README). glibc offers no call to empty or turn off the cache in a running process, only
//! the `glibc.malloc.tcache_count` tunable, read from `GLIBC_TUNABLES` at start; so the
//! daemon starts itself again, once, with it set ([`exec_without_thread_cache`]). Short
//! commands keep the cache: they exit before it could matter.

use std::ffi::OsString;

/// Unmaps the program's code pages from this process, for an idle daemon after a cycle:
/// the next use of a page maps it again, from the system's file cache, unchanged. The
/// kernel maps code 64 KiB around each page a program runs (fault-around), so work the
/// idle daemon does not repeat (a sync of 100,000 mailboxes, a long drain) left 0.3–0.6
/// MB of code mapped, counted in its resident memory and kept from reclaim while mapped;
/// unmapped, they are the file cache's to keep or drop, and the next cycle maps back the
/// few hundred kilobytes the idle daemon runs (the layout gathers them,
/// `link/idle-code.ld`), from memory while the system has kept them, else from disk.
///
/// A code page the process has its own copy of is kept: a debugger's breakpoint, or a
/// uprobe, writes its instruction into a private copy of the page, and unmapping that
/// copy would remove the breakpoint. Only runs of pages that are the file's own (or not
/// mapped) are released, as `/proc/self/pagemap` tells them apart; where it cannot be read
/// (no `/proc`, some sandboxes) nothing is released. Returns how many bytes of code were
/// mapped in what was released.
pub fn release_code() -> usize {
    #[cfg(target_os = "linux")]
    {
        release_code_linux().unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// The address ranges of the program's code: its private read-only executable mappings,
/// as `/proc/self/maps` lists them. A mapping is the program's when its path is the one
/// `/proc/self/exe` names (both end in " (deleted)" for a binary removed since it started,
/// whose pages stay in the file cache while it runs); a path the kernel cannot show
/// plainly (a name with a newline) matches nothing, and nothing is released.
#[cfg(target_os = "linux")]
fn code_mappings() -> std::io::Result<Vec<(usize, usize)>> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut ranges = Vec::new();
    for line in maps.lines() {
        // start-end perms offset dev inode, then the path after padding
        let mut f = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(path)) = (f.next(), f.next(), f.nth(3)) else {
            continue;
        };
        if perms != "r-xp" || std::path::Path::new(path.trim_start()) != exe {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) {
            ranges.push((start, end));
        }
    }
    Ok(ranges)
}

#[cfg(target_os = "linux")]
const PAGE: usize = 4096;

/// The pagemap entries of the pages from `start` to `end` (page-aligned), into `into`.
#[cfg(target_os = "linux")]
fn page_entries(
    pagemap: &mut std::fs::File,
    (start, end): (usize, usize),
    into: &mut Vec<u64>,
) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = vec![0u8; (end - start) / PAGE * 8];
    pagemap.seek(SeekFrom::Start((start / PAGE * 8) as u64))?;
    pagemap.read_exact(&mut bytes)?;
    into.clear();
    into.extend(
        bytes
            .chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes"))),
    );
    Ok(())
}

/// Whether a pagemap entry is a page of the process's own: present or swapped out (bit
/// 63 or 62) and not the file's (bit 61 clear). A file's page being migrated shows as
/// swapped and the file's, and is released like the rest.
#[cfg(target_os = "linux")]
fn is_private_copy(entry: u64) -> bool {
    let present_or_swapped = entry >> 63 & 1 == 1 || entry >> 62 & 1 == 1;
    present_or_swapped && entry >> 61 & 1 == 0
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn release_code_linux() -> std::io::Result<usize> {
    if page_size() != PAGE {
        return Ok(0);
    }
    let mut pagemap = std::fs::File::open("/proc/self/pagemap")?;
    let mut entries = Vec::new();
    let mut released = 0;
    for (start, end) in code_mappings()? {
        if page_entries(&mut pagemap, (start, end), &mut entries).is_err() {
            continue;
        }
        // Runs of pages between private copies.
        let mut run = 0;
        for i in 0..=entries.len() {
            if i < entries.len() && !is_private_copy(entries[i]) {
                continue;
            }
            if i > run {
                let (from, len) = (start + run * PAGE, (i - run) * PAGE);
                // SAFETY: the range lies in a private, read-only, executable mapping of
                // the program's own file, as the kernel lists it. MADV_DONTNEED drops its
                // page table entries; the next access maps the same page of the file
                // again, and the mapping itself (and every pointer into it) stays valid.
                // The range held none of the process's own copies of its pages when the
                // pagemap was read; a breakpoint written into it in the microseconds
                // since would be removed, which costs a debugging session a stop, never
                // the program its memory.
                let rc =
                    unsafe { libc::madvise(from as *mut libc::c_void, len, libc::MADV_DONTNEED) };
                if rc == 0 {
                    let mapped = entries[run..i].iter().filter(|e| *e >> 63 == 1).count();
                    released += mapped * PAGE;
                }
            }
            run = i + 1;
        }
    }
    Ok(released)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(0)
}

/// The tunable that turns glibc's per-thread cache off.
pub const NO_THREAD_CACHE: &str = "glibc.malloc.tcache_count=0";

/// Set only in the environment of the program started again, to what `GLIBC_TUNABLES`
/// held before: `-` when it was not set, `=` and its value when it was. Its presence
/// makes the start again happen at most once, whatever glibc did with the tunables
/// (in a secure-execution process, one with set-user-id or file capabilities, glibc
/// drops them, and without this the daemon would start itself again forever); its
/// value lets the daemon put back the user's tunables, so that the commands it starts
/// (notification hooks) run with the environment the daemon was given.
pub const RESTARTED_VAR: &str = "IMM_DAEMON_RESTARTED";

/// What `GLIBC_TUNABLES` must hold for the daemon's process, given what it holds now:
/// `None` when it already names a `tcache_count` (the user's choice stands, and the
/// program started again with it stops there, so it never loops); else the tunables
/// there with [`NO_THREAD_CACHE`] added.
pub fn tunables_without_thread_cache(current: Option<&std::ffi::OsStr>) -> Option<OsString> {
    match current {
        Some(c) if c.to_string_lossy().contains("glibc.malloc.tcache_count") => None,
        Some(c) if !c.is_empty() => {
            let mut v = c.to_os_string();
            v.push(":");
            v.push(NO_THREAD_CACHE);
            Some(v)
        }
        _ => Some(NO_THREAD_CACHE.into()),
    }
}

/// [`RESTARTED_VAR`]'s value for what `GLIBC_TUNABLES` holds before the start again.
pub fn restarted_marker(before: Option<&std::ffi::OsStr>) -> OsString {
    match before {
        None => "-".into(),
        Some(v) => {
            let mut m = OsString::from("=");
            m.push(v);
            m
        }
    }
}

/// What `GLIBC_TUNABLES` held before the start again, from [`RESTARTED_VAR`]'s value
/// ([`restarted_marker`]'s inverse): `Some(None)` when it was not set, `Some(Some(v))`
/// when it held `v`, and `None` when the value is not one of ours (a marker copied from
/// another process's environment, say): then the tunables are left as they are.
pub fn tunables_before_restart(marker: &std::ffi::OsStr) -> Option<Option<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    match marker.as_bytes() {
        b"-" => Some(None),
        [b'=', v @ ..] => Some(Some(std::ffi::OsStr::from_bytes(v).to_os_string())),
        _ => None,
    }
}

/// Why the daemon does not start itself again where it could: a process glibc treats as
/// secure-execution (set-user-id or file capabilities: glibc drops the tunables), and a
/// process with a preloaded library (valgrind, heaptrack and other tools preload theirs,
/// and would lose the daemon or run their own program in its place). Profiling the
/// daemon as it runs in service can set `GLIBC_TUNABLES` with
/// `glibc.malloc.tcache_count=0` itself.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn restart_is_unwise() -> bool {
    // SAFETY: getauxval reads the auxiliary vector the kernel gave the process; it takes
    // no pointers.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    secure || std::env::var_os("LD_PRELOAD").is_some_and(|v| !v.is_empty())
}

/// For the daemon, first thing in `main`: replaces the process (same process id, name,
/// arguments and environment) with the program started again with glibc's per-thread
/// cache off ([`NO_THREAD_CACHE`] added to `GLIBC_TUNABLES`). In the program started
/// again it puts back the environment the daemon was given (the tunables as they were,
/// [`RESTARTED_VAR`] removed): glibc read the tunables as the process started, and the
/// daemon's children should not inherit ours.
///
/// Returns only when it did not start the program again: nothing to do (not glibc, the
/// program was started again already, `GLIBC_TUNABLES` names a `tcache_count`, or
/// starting again is unwise, see [`restart_is_unwise`]), `None`; or the program could
/// not be started again (a binary removed since), the reason, and the daemon runs on
/// with the cache.
///
/// # Safety
/// No other thread may be running: it changes the process's environment.
#[allow(unsafe_code)]
pub unsafe fn exec_without_thread_cache() -> Option<std::io::Error> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if let Some(marker) = std::env::var_os(RESTARTED_VAR) {
            // SAFETY: the caller promises no other thread runs, so none reads the
            // environment as it changes.
            unsafe {
                std::env::remove_var(RESTARTED_VAR);
                match tunables_before_restart(&marker) {
                    Some(Some(v)) => std::env::set_var("GLIBC_TUNABLES", v),
                    Some(None) => std::env::remove_var("GLIBC_TUNABLES"),
                    None => {}
                }
            }
            return None;
        }
        if restart_is_unwise() {
            return None;
        }
        let before = std::env::var_os("GLIBC_TUNABLES");
        let tunables = tunables_without_thread_cache(before.as_deref())?;
        let mut args = std::env::args_os();
        let argv0 = args.next()?;
        // The program's own path, not `/proc/self/exe`, so that the process keeps its
        // name (`ps`, `pgrep`, the journal's _COMM), which the kernel takes from the
        // file name started. This path has its symbolic links resolved, so a daemon
        // started through a link of another name takes the file's. A binary removed or
        // replaced since has a path that no longer names it ("… (deleted)"): then the
        // start fails and the daemon runs on.
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => return Some(e),
        };
        Some(
            std::process::Command::new(exe)
                .arg0(argv0)
                .args(args)
                .env(RESTARTED_VAR, restarted_marker(before.as_deref()))
                .env("GLIBC_TUNABLES", tunables)
                .exec(),
        )
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Returns the allocator's free pages to the system. Only glibc has `malloc_trim`;
/// elsewhere the allocator's own policy applies and this does nothing.
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and touches no memory the program owns; it
    // walks the allocator's own free lists under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    /// How many pages of this program's code mappings are mapped in this process, from
    /// the present bits of `/proc/self/pagemap`.
    #[cfg(target_os = "linux")]
    fn code_pages_mapped() -> usize {
        let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut entries = Vec::new();
        let mut mapped = 0;
        for range in code_mappings().unwrap() {
            page_entries(&mut pagemap, range, &mut entries).unwrap();
            mapped += entries.iter().filter(|e| *e >> 63 == 1).count();
        }
        mapped
    }

    /// Releasing the code unmaps it: in a child process of one thread (so no other
    /// test maps pages back meanwhile) most of what was mapped is gone, and the code
    /// still runs, mapped back as it is used.
    #[cfg(target_os = "linux")]
    #[test]
    fn released_code_leaves_the_process_and_comes_back_when_run() {
        if std::env::var_os("IMM_CODE_TEST_CHILD").is_some() {
            // Work that runs much code the measuring does not: a database made, written
            // and read (SQLite, the migrations, the audit chain).
            let dir = tempfile::tempdir().unwrap();
            let mut store = crate::store::Store::open(&dir.path().join("db")).unwrap();
            store
                .write(|tx| tx.upsert_mailboxes(&[]))
                .map(|_| ())
                .unwrap();
            store.checkpoint().unwrap();
            drop(store);
            // A debugger's breakpoint, as debuggers write it: one byte of code written
            // through /proc/self/mem gives the process its own copy of that page (here
            // the same byte, so the code is unchanged).
            let at = is_private_copy as fn(u64) -> bool as usize;
            let page = at / PAGE * PAGE;
            let entry = |pagemap: &mut std::fs::File| {
                let mut e = Vec::new();
                page_entries(pagemap, (page, page + PAGE), &mut e).unwrap();
                e[0]
            };
            // A kernel booted with proc_mem.force_override=never refuses the write, as
            // it would refuse a debugger's: then there is no breakpoint to keep.
            let wrote = (|| -> std::io::Result<()> {
                use std::io::{Read, Seek, SeekFrom, Write};
                let mut mem = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/proc/self/mem")?;
                let mut byte = [0u8];
                mem.seek(SeekFrom::Start(at as u64))?;
                mem.read_exact(&mut byte)?;
                mem.seek(SeekFrom::Start(at as u64))?;
                mem.write_all(&byte)
            })();
            if let Err(e) = &wrote {
                println!("no breakpoint written ({e}); its page is not checked");
            }
            let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
            if wrote.is_ok() {
                assert!(is_private_copy(entry(&mut pagemap)), "no private copy made");
            }
            let _ = code_pages_mapped();
            let before = code_pages_mapped();
            assert!(before > 0);
            assert!(release_code() >= (before - 1) * PAGE);
            let after = code_pages_mapped();
            println!("code pages mapped: {before} before, {after} after");
            assert!(after * 2 < before, "{after} of {before} pages still mapped");
            // The breakpoint's page stayed, the process's own copy.
            if wrote.is_ok() {
                assert!(
                    is_private_copy(entry(&mut pagemap)),
                    "the private copy went"
                );
            }
            assert_eq!(
                tunables_without_thread_cache(None),
                Some(NO_THREAD_CACHE.into())
            );
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "memory::tests::released_code_leaves_the_process_and_comes_back_when_run",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("IMM_CODE_TEST_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_restart_marker_carries_the_tunables_before_and_a_foreign_one_changes_nothing() {
        for before in [None, Some(""), Some("glibc.malloc.trim_threshold=0:x=-")] {
            let marker = restarted_marker(before.map(OsStr::new));
            assert_eq!(
                tunables_before_restart(&marker),
                Some(before.map(OsString::from)),
                "{before:?}"
            );
        }
        for foreign in ["", "1", "yes", "-x"] {
            assert_eq!(tunables_before_restart(OsStr::new(foreign)), None);
        }
    }

    #[test]
    fn the_thread_cache_tunable_is_added_once_and_a_users_choice_stands() {
        assert_eq!(
            tunables_without_thread_cache(None),
            Some(NO_THREAD_CACHE.into())
        );
        assert_eq!(
            tunables_without_thread_cache(Some(OsStr::new(""))),
            Some(NO_THREAD_CACHE.into())
        );
        assert_eq!(
            tunables_without_thread_cache(Some(OsStr::new("glibc.malloc.trim_threshold=0"))),
            Some("glibc.malloc.trim_threshold=0:glibc.malloc.tcache_count=0".into())
        );
        // Set already, by us (the program started again) or by the user.
        for set in [
            NO_THREAD_CACHE,
            "glibc.malloc.tcache_count=3:glibc.mem.tagging=0",
        ] {
            assert_eq!(tunables_without_thread_cache(Some(OsStr::new(set))), None);
        }
    }
}
