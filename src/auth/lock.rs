//! The refresh lock: an advisory `flock` on a file beside the token store, held while a
//! process reads, refreshes and rewrites the tokens. A rotated refresh token presented
//! again can revoke the whole grant, so the CLI and the daemon never refresh at once.
//!
//! The wait is bounded: the lock is tried every 50 ms until `timeout`, so a process
//! stuck while holding it costs others a clear error, not a hang. The operating system
//! releases the lock when its holder exits, however it exits.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::AuthError;

/// The held lock; released when dropped.
#[derive(Debug)]
pub struct RefreshLock {
    _file: File,
}

const RETRY: Duration = Duration::from_millis(50);

impl RefreshLock {
    /// Takes the lock at `path`, waiting at most `timeout`.
    pub async fn acquire(path: &Path, timeout: Duration) -> Result<RefreshLock, AuthError> {
        let io = |e: std::io::Error| AuthError::Lock {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let file = crate::paths::open_private(path).map_err(|e| AuthError::Lock {
            path: path.to_path_buf(),
            detail: crate::error::chain(&e),
        })?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(RefreshLock { _file: file }),
                Err(TryLockError::WouldBlock) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AuthError::LockTimeout {
                            path: path.to_path_buf(),
                            waited: timeout,
                        });
                    }
                    tokio::time::sleep(RETRY).await;
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
    }
}

/// The lock file for a token store in `data_dir`.
pub fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_then_gets_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/tokens.lock");
        let held = RefreshLock::acquire(&path, Duration::from_secs(1))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let e = RefreshLock::acquire(&path, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(e.to_string().contains("another imm-daemon process"), "{e}");
        drop(held);
        RefreshLock::acquire(&path, Duration::from_millis(200))
            .await
            .unwrap();
    }
}
