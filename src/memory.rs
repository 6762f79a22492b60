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
/// `link/idle-code.ld`). Returns how many bytes of mappings were released (0 where
/// there is no `/proc`). Code pages are never written, so nothing is lost.
pub fn release_code() -> usize {
    #[cfg(target_os = "linux")]
    {
        release_code_linux().unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn release_code_linux() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut released = 0;
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
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a private, read-only, executable mapping of the program's
        // own file, as the kernel lists it. MADV_DONTNEED drops this process's page
        // table entries for it; the next access maps the same page of the file again.
        // Code pages are never written, so no private copy is discarded, and the
        // mapping itself (and every pointer into it) stays valid.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += end - start;
        }
    }
    Ok(released)
}

/// The tunable that turns glibc's per-thread cache off.
pub const NO_THREAD_CACHE: &str = "glibc.malloc.tcache_count=0";

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

/// For the daemon, before it starts any thread or opens anything: replaces the process
/// (same process id, name, arguments and environment) with the program started again with
/// glibc's per-thread cache off ([`NO_THREAD_CACHE`] added to `GLIBC_TUNABLES`). Returns
/// only when it did not: nothing to do (not glibc, or `GLIBC_TUNABLES` already names a
/// `tcache_count`), `None`; or the program could not be started again (`/proc` not
/// mounted, say), the reason, and the daemon runs on with the cache.
pub fn exec_without_thread_cache() -> Option<std::io::Error> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let tunables =
            tunables_without_thread_cache(std::env::var_os("GLIBC_TUNABLES").as_deref())?;
        let mut args = std::env::args_os();
        let argv0 = args.next()?;
        // The program's own path, not `/proc/self/exe`, so that the process keeps its
        // name (`ps`, `pgrep`, the journal's _COMM), which the kernel takes from the
        // path started. A binary removed or replaced since has a path that no longer
        // names it ("… (deleted)"): then the start fails and the daemon runs on.
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => return Some(e),
        };
        Some(
            std::process::Command::new(exe)
                .arg0(argv0)
                .args(args)
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
        use std::io::{Read, Seek, SeekFrom};
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut mapped = 0;
        for line in maps.lines() {
            let f: Vec<&str> = line.splitn(6, ' ').collect();
            if f.len() < 6 || f[1] != "r-xp" || std::path::Path::new(f[5].trim_start()) != exe {
                continue;
            }
            let (start, end) = f[0].split_once('-').unwrap();
            let start = usize::from_str_radix(start, 16).unwrap() / 4096;
            let end = usize::from_str_radix(end, 16).unwrap() / 4096;
            let mut entries = vec![0u8; (end - start) * 8];
            pagemap.seek(SeekFrom::Start(start as u64 * 8)).unwrap();
            pagemap.read_exact(&mut entries).unwrap();
            mapped += entries
                .chunks_exact(8)
                .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 1)
                .count();
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
            let _ = code_pages_mapped();
            let before = code_pages_mapped();
            assert!(before > 0);
            assert!(release_code() >= before * 4096);
            let after = code_pages_mapped();
            println!("code pages mapped: {before} before, {after} after");
            assert!(after * 2 < before, "{after} of {before} pages still mapped");
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
