//! The daemon's state file: what it last said about itself, written atomically after
//! start, after every cycle and at shutdown, so that `imm-daemon status` can report on a
//! daemon that is not running (or not answering).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::heartbeat::CycleSummary;

/// The state file's format version; a reader refuses other versions.
pub const STATE_VERSION: u32 = 1;

/// The contents of the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonState {
    pub version: u32,
    pub pid: u32,
    pub daemon_version: String,
    /// When this run started (RFC 3339, UTC).
    pub started_at: String,
    /// `running` while the daemon runs; `stopped` after a clean shutdown. A file that says
    /// `running` while no process holds the lock was left by a crash.
    pub phase: Phase,
    /// When the phase was last written.
    pub updated_at: String,
    /// The heartbeat interval in effect, in seconds.
    pub heartbeat_secs: u64,
    /// When the next cycle is due, while running.
    pub next_cycle_at: Option<String>,
    /// How many cycles this run has completed.
    pub cycles: u64,
    /// The last completed cycle.
    pub last_cycle: Option<CycleSummary>,
    /// The database schema version this daemon's build writes; absent from older builds.
    /// A running daemon of another schema writes by older rules: it does not start a new
    /// generation of the kept `stats` tallies, so `stats` does not trust them beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
}

/// Whether the daemon was running when the file was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Stopped,
}

/// Errors reading the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the daemon state file {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon state file {path} is damaged: {message}")]
    Damaged {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(transparent)]
    Write(#[from] crate::paths::PathsError),
}

impl DaemonState {
    /// Reads the state file; `None` when there is none (the daemon never ran here).
    pub fn load(path: &Path) -> Result<Option<DaemonState>, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let damaged = |message: String| StateError::Damaged {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(STATE_VERSION) => {}
            Some(v) => {
                return Err(damaged(format!(
                    "format version {v} is not {STATE_VERSION}"
                )));
            }
            None => return Err(damaged("it has no format version".into())),
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| damaged(e.to_string()))
    }

    /// Replaces the state file atomically (temporary file, fsync, rename), owner-only.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        if let Some(dir) = path.parent() {
            crate::paths::ensure_private_dir(dir)?;
        }
        let mut text = serde_json::to_vec_pretty(self).expect("the state serializes");
        text.push(b'\n');
        crate::paths::write_atomic(path, &text)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DaemonState {
        DaemonState {
            version: STATE_VERSION,
            pid: 42,
            daemon_version: "0.1.0".into(),
            started_at: "2026-11-21T00:00:00Z".into(),
            phase: Phase::Running,
            updated_at: "2026-11-21T00:05:00Z".into(),
            heartbeat_secs: 300,
            next_cycle_at: Some("2026-11-21T00:10:00Z".into()),
            cycles: 1,
            last_cycle: None,
            schema_version: Some(crate::store::SCHEMA_VERSION),
        }
    }

    #[test]
    fn round_trips_and_reports_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/daemon-state.json");
        assert_eq!(DaemonState::load(&path).unwrap(), None);
        state().save(&path).unwrap();
        assert_eq!(DaemonState::load(&path).unwrap(), Some(state()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        for (text, want) in [
            ("{\"version\": 1, \"pid\": ", "damaged"),
            ("{\"version\": 9}", "format version 9 is not 1"),
            ("{}", "no format version"),
            ("{\"version\": 1, \"pid\": \"x\"}", "invalid type"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = DaemonState::load(&path).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("daemon-state.json"), "{e}");
        }
    }
}
