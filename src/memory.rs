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
/// (same process id, arguments and environment) with the program started again with
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
        Some(
            std::process::Command::new("/proc/self/exe")
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
