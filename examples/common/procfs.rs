//! Reading a process's figures from Linux's `/proc`, for the examples that measure the
//! daemon. Shared through `#[path]`, as `login.rs` is.

/// A field of `/proc/PID/status` counted in kB (`"VmRSS:"`, `"VmHWM:"`, …), in KiB.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc (Linux)");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}
