//! The single-instance lock: an exclusive advisory lock (`flock`) on a file in the runtime
//! folder, holding the owner's pid and version.
//!
//! The operating system releases the lock when its holder exits, however it exits, so a
//! file left behind by a killed daemon never blocks the next start: only a live holder
//! does. Locking uses the standard library's `File::try_lock`, so no crate is needed.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Errors taking the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("imm-daemon is already running (pid {pid}, version {version}; lock file {path})")]
    Held {
        path: PathBuf,
        pid: String,
        version: String,
    },
    #[error("cannot use the lock file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Paths(#[from] crate::paths::PathsError),
}

/// How long a start waits for a `status` probe to let go of the lock.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The held lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
}

/// Who holds (or last held) a lock file: its pid and version, as written by the holder.
pub fn read_holder(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_holder(&text)
}

fn parse_holder(text: &str) -> Option<(String, String)> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.to_string();
    let version = words.next().unwrap_or("unknown").to_string();
    Some((pid, version))
}

impl InstanceLock {
    /// Takes the lock at `path` without waiting, and writes this process's pid and version
    /// into the file.
    pub fn acquire(path: &Path) -> Result<InstanceLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = crate::paths::open_private(path)?;
        // `status` probes the lock with a shared lock for an instant; a start that meets
        // such a probe waits it out rather than reporting the lock as held.
        let deadline = std::time::Instant::now() + PROBE_WAIT;
        let locked = loop {
            match file.try_lock() {
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other,
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
        }
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let (pid, version) =
                    parse_holder(&text).unwrap_or_else(|| ("unknown".into(), "unknown".into()));
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    pid,
                    version,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{} {}", std::process::id(), env!("CARGO_PKG_VERSION")).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(InstanceLock { file })
    }

    /// Whether a live process holds the lock at `path` (probed with a shared lock for an
    /// instant). A missing file means no; a file that cannot be opened or probed is an
    /// error, since then nobody can tell.
    pub fn probe(path: &Path) -> std::io::Result<bool> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match f.try_lock_shared() {
            Ok(()) => {
                let _ = f.unlock();
                Ok(false)
            }
            Err(TryLockError::WouldBlock) => Ok(true),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// [`InstanceLock::probe`], counting a lock that cannot be probed as not held.
    pub fn is_held(path: &Path) -> bool {
        Self::probe(path).unwrap_or(false)
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
// The tests ask for the effective uid and drop a capability around one call.
#[allow(unsafe_code)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_lock_that_cannot_be_probed_is_an_error_not_a_no() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imm-daemon.lock");
        assert!(!InstanceLock::probe(&path).unwrap(), "missing: not held");
        // A lock file below a regular file cannot be opened, even by root.
        let blocked = dir.path().join("not-a-folder");
        std::fs::write(&blocked, "").unwrap();
        assert!(InstanceLock::probe(&blocked.join("imm-daemon.lock")).is_err());
        assert!(!InstanceLock::is_held(&blocked.join("imm-daemon.lock")));
        // Without read permission: as another user's lock file would be. Root reads it
        // anyway, so the check runs where the permission counts even for root.
        std::fs::write(&path, "1 0.1.0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        #[cfg(target_os = "linux")]
        without_permission_override(|| {
            let denied = File::open(&path).unwrap_err();
            assert_eq!(denied.kind(), std::io::ErrorKind::PermissionDenied);
            let e = InstanceLock::probe(&path).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
            assert!(!InstanceLock::is_held(&path));
        });
        #[cfg(not(target_os = "linux"))]
        {
            // SAFETY: geteuid cannot fail.
            if unsafe { libc::geteuid() } == 0 {
                // Elsewhere root cannot give up reading past permissions for one thread.
                crate::skip_test(
                    "a_lock_that_cannot_be_probed_is_an_error_not_a_no (unreadable file part)",
                    "root reads past permissions, and only Linux lets one thread give that up",
                );
            } else {
                assert!(File::open(&path).is_err());
                assert!(InstanceLock::probe(&path).is_err());
            }
        }
    }

    /// Runs `f` on a thread of its own without the capabilities that let root read past
    /// file permissions (every effective and permitted capability is dropped), so the
    /// thread meets the refusals any other user would. Linux keeps capabilities per
    /// thread, so the rest of the test process keeps its own; a process without them
    /// (not root) loses nothing.
    #[cfg(target_os = "linux")]
    fn without_permission_override<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        // _LINUX_CAPABILITY_VERSION_3: two `Data`, for capabilities 0-31 and 32-63.
        const VERSION_3: u32 = 0x2008_0522;
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut header = Header {
                    version: VERSION_3,
                    pid: 0,
                };
                let mut data = [Data::default(); 2];
                // SAFETY: capget and capset read and write only the header and the two
                // data structs passed, laid out as <linux/capability.h> declares them;
                // pid 0 is the calling thread.
                unsafe {
                    assert_eq!(
                        libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
                        0,
                        "capget: {}",
                        std::io::Error::last_os_error()
                    );
                    for d in &mut data {
                        d.effective = 0;
                        d.permitted = 0;
                    }
                    assert_eq!(
                        libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
                        0,
                        "capset: {}",
                        std::io::Error::last_os_error()
                    );
                }
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    #[test]
    fn one_holder_at_a_time_and_a_stale_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/imm-daemon.lock");
        // A file left by a killed daemon: present, naming a pid, but not locked.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "999999 0.0.1\n").unwrap();
        assert!(!InstanceLock::is_held(&path));
        let lock = InstanceLock::acquire(&path).unwrap();
        assert!(InstanceLock::is_held(&path));
        let (pid, version) = read_holder(&path).unwrap();
        assert_eq!(pid, std::process::id().to_string());
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        match InstanceLock::acquire(&path) {
            Err(LockError::Held { pid: p, .. }) => assert_eq!(p, pid),
            other => panic!("{other:?}"),
        }
        let e = InstanceLock::acquire(&path).unwrap_err().to_string();
        assert!(e.contains("already running") && e.contains(&pid), "{e}");
        drop(lock);
        assert!(!InstanceLock::is_held(&path));
        // A start that meets a status probe waits it out.
        let probe = File::open(&path).unwrap();
        probe.try_lock_shared().unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(probe);
        });
        InstanceLock::acquire(&path).unwrap();
        releaser.join().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
