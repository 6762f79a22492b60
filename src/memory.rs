//! Handing memory the process no longer uses back to the system.
//!
//! glibc's allocator keeps what a program frees for its next allocations: after a large
//! piece of work (a sync of a large tenant, a long mail drain, an export loaded into the
//! cache) the idle daemon would otherwise keep the work's peak for the rest of its life.
//! [`trim`] asks it to return every whole free page (`malloc_trim(0)`, which also
//! releases free pages inside the heap, not only at its top). The daemon calls it after
//! every cycle, once SQLite has let go of its cached pages
//! ([`crate::store::Store::release_memory`]).

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
