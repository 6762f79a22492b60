//! The audit chain's head kept outside the database: a small file (in the state folder,
//! 0600, replaced atomically) with the newest audit row's id and hash, written after
//! each commit that adds audit rows. A hash chain alone cannot show that its newest rows
//! were cut off, or that the whole database was swapped for a new one; comparing the
//! database with this file at open can. A mismatch is an incident: it is kept in the file
//! (so status needs attention and `audit verify` fails) until a person acknowledges it,
//! and an `ERROR` row in the database's own log records it.
//!
//! What it does not cover: someone who can write the state folder can rewrite or delete
//! the file along with the database (the folder checks keep other users out; the owner
//! is trusted), and a process that opens the database without it (`Store::open`) writes
//! no head, which only lets the file fall behind, never raise a false alarm.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::audit::{AuditEvent, Operation};

/// The head file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditHead {
    /// The newest audit row committed, as this file last heard.
    pub id: i64,
    pub hash: String,
    /// A mismatch found at some open, until acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<Incident>,
}

/// How the database's chain missed the recorded head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// The newest rows are gone.
    Truncated,
    /// The row at the head has another hash.
    Replaced,
    /// The database was created afresh.
    NewDatabase,
}

/// The database's audit chain did not reach the recorded head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub kind: IncidentKind,
    /// The head recorded before: id and hash.
    pub expected_id: i64,
    pub expected_hash: String,
    /// The newest row id the database had.
    pub found_id: i64,
    pub detected_at: String,
}

impl Incident {
    /// One sentence for errors, status and logs.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            IncidentKind::Truncated => format!(
                "was cut off: its newest row is {} but row {} had been written",
                self.found_id, self.expected_id
            ),
            IncidentKind::NewDatabase => format!(
                "was replaced by a new, empty database (row {} had been written)",
                self.expected_id
            ),
            IncidentKind::Replaced => format!(
                "was replaced: row {} is not the row that had been written",
                self.expected_id
            ),
        };
        format!(
            "the audit log {what} (found {}); look into it, then run `imm-daemon audit verify --acknowledge`",
            self.detected_at
        )
    }
}

/// Reads the head file; `None` when there is none. A damaged file is an error.
pub fn read(path: &Path) -> Result<Option<AuditHead>, StoreError> {
    match std::fs::read(path) {
        // The file holds an id and a hash, nothing secret: serde's message may quote it.
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::AuditHead {
                path: path.to_path_buf(),
                message: format!("it is damaged: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::AuditHead {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

fn write(path: &Path, head: &AuditHead) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(head).expect("the head serializes");
    crate::paths::write_atomic(path, &bytes)?;
    Ok(())
}

impl Store {
    /// Opens the database as [`Store::open`] does, then keeps its audit head in
    /// `head_path`: compares it with the database now (recording an incident on a
    /// mismatch) and writes it after every commit that adds audit rows.
    pub fn open_audited(
        path: &Path,
        head_path: &Path,
        busy: std::time::Duration,
    ) -> Result<Store, StoreError> {
        let mut store = Store::open_waiting(path, busy)?;
        store.audit_head = Some(head_path.to_path_buf());
        store.check_audit_head(Utc::now())?;
        Ok(store)
    }

    /// The incident standing in the head file, if any.
    pub fn audit_incident(&self) -> Result<Option<Incident>, StoreError> {
        match &self.audit_head {
            Some(p) => Ok(read(p)?.and_then(|h| h.incident)),
            None => Ok(None),
        }
    }

    /// Clears a standing incident (a person has looked into it), auditing that.
    pub fn acknowledge_audit_incident(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<Option<Incident>, StoreError> {
        let Some(path) = self.audit_head.clone() else {
            return Ok(None);
        };
        let Some(mut head) = read(&path)? else {
            return Ok(None);
        };
        let Some(incident) = head.incident.take() else {
            return Ok(None);
        };
        write(&path, &head)?;
        self.audit(
            &AuditEvent::new(Operation::AuditVerify).details(serde_json::json!({
                "acknowledged": incident,
            })),
            now,
        )?;
        Ok(Some(incident))
    }

    fn check_audit_head(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(path) = self.audit_head.clone() else {
            return Ok(());
        };
        let Some(head) = read(&path)? else {
            return Ok(());
        };
        if head.id <= 0 {
            return Ok(());
        }
        let conn = &self.conn;
        let (found_id, found_hash): (i64, String) = conn
            .query_row(
                "SELECT id, coalesce(hash, '') FROM audit_log ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or_default();
        let at_head = conn
            .query_row("SELECT hash FROM audit_log WHERE id = ?1", [head.id], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()?
            .flatten();
        let anchor: Option<(i64, String)> = conn
            .query_row(
                "SELECT last_id, last_hash FROM audit_anchor WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let kind = match (&at_head, &anchor) {
            (Some(h), _) if *h == head.hash => return Ok(()),
            (Some(_), _) => IncidentKind::Replaced,
            // Pruned up to the head or past it: the anchor vouches, or nothing can tell.
            (None, Some((last, hash))) if *last == head.id && *hash == head.hash => {
                return Ok(());
            }
            (None, Some((last, _))) if *last > head.id => return Ok(()),
            (None, _) if found_id == 0 && anchor.is_none() => IncidentKind::NewDatabase,
            (None, _) => IncidentKind::Truncated,
        };
        let incident = Incident {
            kind,
            expected_id: head.id,
            expected_hash: head.hash.clone(),
            found_id,
            detected_at: crate::time::stamp(now),
        };
        tracing::error!("{}", incident.describe());
        // The head starts again from the chain the database has, keeping the incident
        // (the first one, if one already stands) until a person acknowledges it.
        write(
            &path,
            &AuditHead {
                id: found_id,
                hash: found_hash,
                incident: Some(head.incident.clone().unwrap_or_else(|| incident.clone())),
            },
        )?;
        self.audit(
            &AuditEvent::new(Operation::Error)
                .details(serde_json::json!({"audit_head": incident}))
                .failed(incident.describe()),
            now,
        )?;
        Ok(())
    }

    /// Moves the head file on to `(id, hash)` after a commit, keeping any incident; a
    /// head already past it (another process's later commit) is left alone.
    pub(super) fn advance_audit_head(&self, id: i64, hash: &str) {
        let Some(path) = &self.audit_head else {
            return;
        };
        let result = read(path).and_then(|old| {
            let old = old.unwrap_or_default();
            if old.id >= id {
                return Ok(());
            }
            write(
                path,
                &AuditHead {
                    id,
                    hash: hash.to_string(),
                    incident: old.incident,
                },
            )
        });
        if let Err(e) = result {
            tracing::warn!("cannot record the audit head in {}: {e}", path.display());
        }
    }
}
