//! Audit events, the SHA-256 hash chain that makes the log tamper-evident, and its
//! verification. The SQL lives in `store`; this module decides what a row is and how it
//! is hashed.
//!
//! Each row's `hash` is SHA-256 over the previous row's hash and every stored field of the
//! row (length-prefixed, so no two rows encode alike). Changing, inserting, reordering or
//! deleting a row breaks the chain at that row. Pruning deletes a prefix of the log and
//! records the last deleted row's id and hash as the anchor the remaining chain starts
//! from. A chain cannot show that its newest rows were cut off; `audit verify` prints the
//! head hash so it can be recorded elsewhere.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first row of a never-pruned log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

macro_rules! operations {
    ($($(#[$m:meta])* $v:ident => $s:literal,)*) => {
        /// What an audit row records.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Operation { $($(#[$m])* $v,)* }

        impl Operation {
            pub const ALL: &'static [Operation] = &[$(Operation::$v,)*];
            pub fn as_str(self) -> &'static str {
                match self { $(Operation::$v => $s,)* }
            }
        }
    };
}

operations! {
    /// The daemon started (or a session with Microsoft began).
    Connect => "CONNECT",
    /// The daemon stopped.
    Disconnect => "DISCONNECT",
    /// Inactive mailboxes were listed, searched or summarised.
    ListMailboxes => "LIST_MAILBOXES",
    /// One inactive mailbox was shown.
    GetMailboxDetails => "GET_MAILBOX_DETAILS",
    RecoverMailbox => "RECOVER_MAILBOX",
    RestoreMailbox => "RESTORE_MAILBOX",
    RemoveHold => "REMOVE_HOLD",
    ChangeHold => "CHANGE_HOLD",
    BulkOperation => "BULK_OPERATION",
    /// Data left the program in a file.
    ExportData => "EXPORT_DATA",
    /// An operation failed.
    Error => "ERROR",
    /// Mailboxes were imported from a PowerShell export.
    ImportMailboxes => "IMPORT_MAILBOXES",
    /// A mailbox left the cache because a snapshot (an import, a sync) no longer had it.
    MailboxRemoved => "MAILBOX_REMOVED",
    /// A sync found a new inactive mailbox.
    MailboxAdded => "MAILBOX_ADDED",
    /// A sync found a mailbox's holds or recovery eligibility changed.
    MailboxChanged => "MAILBOX_CHANGED",
    /// The inactive mailboxes were read from Exchange Online (source, counts, pages,
    /// statistics calls, throttled waits, duration).
    SyncMailboxes => "SYNC_MAILBOXES",
    /// The mailbox cache was emptied.
    ClearCache => "CLEAR_CACHE",
    /// The audit log was read.
    AuditList => "AUDIT_LIST",
    /// The audit chain was verified.
    AuditVerify => "AUDIT_VERIFY",
    /// Old audit rows were pruned.
    AuditPrune => "AUDIT_PRUNE",
    /// A person signed in (device code or an imported MSAL cache).
    Login => "LOGIN",
    /// A sign-in did not complete (declined, expired, refused).
    LoginFailed => "LOGIN_FAILED",
    /// The identity platform asked for a person: the refresh token no longer works.
    LoginRequired => "LOGIN_REQUIRED",
    /// Tokens were removed from every store.
    Logout => "LOGOUT",
    /// An access token was obtained with the refresh token.
    TokenRefresh => "TOKEN_REFRESH",
    /// A mail was delivered to Graph (queue id, sender, recipients, subject; never the
    /// body or attachments).
    SendEmail => "SEND_EMAIL",
    /// Mails were added to the outgoing queue (`send`).
    QueueAdd => "QUEUE_ADD",
    /// Graph throttled or failed a send that will be repeated (attempt, status, wait).
    RateLimited => "RATE_LIMITED",
    /// A mail was given up on: refused by Graph, or out of attempts.
    SendFailed => "SEND_FAILED",
    /// A failed or cancelled mail was queued again.
    QueueRetry => "QUEUE_RETRY",
    /// A queued or failed mail was cancelled.
    QueueCancel => "QUEUE_CANCEL",
    /// Sent mails were purged from the queue.
    QueuePurge => "QUEUE_PURGE",
    /// The daemon reread its configuration (SIGHUP or `reload`); failed when the new file
    /// was invalid and the old configuration stayed in effect.
    ReloadConfig => "RELOAD_CONFIG",
}

impl Operation {
    /// Parses an operation name, ignoring case.
    pub fn parse(s: &str) -> Option<Operation> {
        Operation::ALL
            .iter()
            .copied()
            .find(|o| o.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the audited operation succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// An audit event about to be written.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub operation: Operation,
    pub identity: Option<String>,
    pub details: Value,
    pub outcome: Outcome,
    pub error_message: Option<String>,
}

impl AuditEvent {
    /// A successful operation with no details yet.
    pub fn new(operation: Operation) -> AuditEvent {
        AuditEvent {
            operation,
            identity: None,
            details: Value::Object(Default::default()),
            outcome: Outcome::Success,
            error_message: None,
        }
    }

    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn failed(mut self, message: impl Into<String>) -> Self {
        self.outcome = Outcome::Failure;
        self.error_message = Some(message.into());
        self
    }
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub timestamp: String,
    pub operation: String,
    pub identity: Option<String>,
    pub user: Option<String>,
    pub details: Option<String>,
    pub result: Option<String>,
    pub error_message: Option<String>,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// The operating-system user the program runs as.
pub fn os_user() -> String {
    whoami::username()
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The chain hash of a row whose fields are given, following `prev_hash`.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    prev_hash: &str,
    id: i64,
    timestamp: &str,
    operation: &str,
    identity: Option<&str>,
    user: Option<&str>,
    details: Option<&str>,
    result: Option<&str>,
    error_message: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    let mut field = |v: Option<&[u8]>| match v {
        None => h.update([0u8]),
        Some(b) => {
            h.update([1u8]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    };
    field(Some(prev_hash.as_bytes()));
    field(Some(&id.to_le_bytes()));
    field(Some(timestamp.as_bytes()));
    field(Some(operation.as_bytes()));
    for v in [identity, user, details, result, error_message] {
        field(v.map(str::as_bytes));
    }
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl AuditRow {
    /// The hash this row should carry given the previous row's hash.
    pub fn expected_hash(&self, prev_hash: &str) -> String {
        chain_hash(
            prev_hash,
            self.id,
            &self.timestamp,
            &self.operation,
            self.identity.as_deref(),
            self.user.as_deref(),
            self.details.as_deref(),
            self.result.as_deref(),
            self.error_message.as_deref(),
        )
    }
}

/// Where a pruned chain starts: the last deleted row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anchor {
    pub last_id: i64,
    pub last_hash: String,
}

/// The first row at which the chain does not hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Break {
    pub id: i64,
    pub reason: String,
}

/// Walks a chain row by row; feed rows in id order, call [`Verifier::finish`], then read
/// the outcome.
#[derive(Debug)]
pub struct Verifier {
    /// The prune anchor the chain was verified from.
    pub anchor: Option<Anchor>,
    expected_prev: String,
    last_id: i64,
    first_id: Option<i64>,
    /// The anchor the newest AUDIT_PRUNE row recorded (`Some(None)`: a prune that left no
    /// anchor), which must match the stored one: the anchor table is not chained itself.
    vouched_anchor: Option<Option<Anchor>>,
    pub rows_checked: u64,
    pub first_break: Option<Break>,
}

impl Verifier {
    pub fn new(anchor: Option<&Anchor>) -> Verifier {
        Verifier {
            anchor: anchor.cloned(),
            expected_prev: anchor.map_or_else(|| GENESIS.to_string(), |a| a.last_hash.clone()),
            last_id: anchor.map_or(0, |a| a.last_id),
            first_id: None,
            vouched_anchor: None,
            rows_checked: 0,
            first_break: None,
        }
    }

    /// Checks that the stored anchor is the one the newest (chained) AUDIT_PRUNE row
    /// recorded, so rows cannot be deleted from the start of the log by forging an anchor.
    pub fn finish(&mut self, anchor: Option<&Anchor>) {
        if self.first_break.is_some() {
            return;
        }
        let Some(anchor) = anchor else { return };
        let vouched = matches!(&self.vouched_anchor, Some(Some(a)) if a == anchor);
        if !vouched {
            self.first_break = Some(Break {
                id: self.first_id.unwrap_or(anchor.last_id + 1),
                reason: "the prune anchor the chain starts from is not the one the last AUDIT_PRUNE row recorded (rows were removed from the start of the log)".into(),
            });
        }
    }

    /// Checks one row; returns false once the chain is broken (later rows are not read).
    pub fn check(&mut self, row: &AuditRow) -> bool {
        if self.first_break.is_some() {
            return false;
        }
        self.rows_checked += 1;
        let reason = if row.id <= self.last_id {
            Some(format!("id {} does not follow id {}", row.id, self.last_id))
        } else if row.prev_hash.as_deref() != Some(self.expected_prev.as_str()) {
            Some(if self.rows_checked == 1 && self.last_id > 0 {
                "does not link to the anchor left by the last prune (rows were removed or changed)"
                    .to_string()
            } else {
                "does not link to the row before it (a row was removed, inserted or reordered)"
                    .to_string()
            })
        } else if row.hash.as_deref() != Some(row.expected_hash(&self.expected_prev).as_str()) {
            Some("its content does not match its hash (the row was changed)".to_string())
        } else {
            None
        };
        match reason {
            Some(reason) => {
                self.first_break = Some(Break { id: row.id, reason });
                false
            }
            None => {
                self.expected_prev = row.hash.clone().unwrap_or_default();
                self.last_id = row.id;
                self.first_id.get_or_insert(row.id);
                if row.operation == Operation::AuditPrune.as_str() {
                    let anchor = row
                        .details
                        .as_deref()
                        .and_then(|d| serde_json::from_str::<Value>(d).ok())
                        .and_then(|d| {
                            Some(Anchor {
                                last_id: d["anchor"]["last_id"].as_i64()?,
                                last_hash: d["anchor"]["last_hash"].as_str()?.to_string(),
                            })
                        });
                    self.vouched_anchor = Some(anchor);
                }
                true
            }
        }
    }

    /// The hash of the newest row checked (the anchor's when the log is empty).
    pub fn head_hash(&self) -> &str {
        &self.expected_prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|id| {
                let mut r = AuditRow {
                    id,
                    timestamp: format!("2025-01-01T00:00:{id:02}.000000Z"),
                    operation: "LIST_MAILBOXES".into(),
                    identity: None,
                    user: Some("alice".into()),
                    details: Some("{}".into()),
                    result: Some("success".into()),
                    error_message: None,
                    prev_hash: Some(prev.clone()),
                    hash: None,
                };
                r.hash = Some(r.expected_hash(&prev));
                prev = r.hash.clone().unwrap();
                r
            })
            .collect()
    }

    fn verify(rows: &[AuditRow], anchor: Option<&Anchor>) -> Option<Break> {
        let mut v = Verifier::new(anchor);
        for r in rows {
            if !v.check(r) {
                break;
            }
        }
        v.finish(anchor);
        v.first_break
    }

    /// Rows 1..=n where row `prune_at` is an AUDIT_PRUNE row vouching for `anchor`.
    fn chain_with_prune(n: i64, prune_at: i64, anchor: &Anchor) -> Vec<AuditRow> {
        let mut rows = chain(n);
        let mut prev = if prune_at > 1 {
            rows[(prune_at - 2) as usize].hash.clone().unwrap()
        } else {
            GENESIS.to_string()
        };
        for r in rows.iter_mut().skip((prune_at - 1) as usize) {
            if r.id == prune_at {
                r.operation = "AUDIT_PRUNE".into();
                r.details = Some(serde_json::json!({"anchor": anchor}).to_string());
            }
            r.prev_hash = Some(prev.clone());
            r.hash = Some(r.expected_hash(&prev));
            prev = r.hash.clone().unwrap();
        }
        rows
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(5), None), None);
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_its_row() {
        let mut rows = chain(5);
        rows[2].user = Some("mallory".into());
        assert_eq!(verify(&rows, None).unwrap().id, 3);

        let mut rows = chain(5);
        rows.remove(1);
        assert_eq!(verify(&rows, None).unwrap().id, 3);

        let mut rows = chain(5);
        rows[3].error_message = Some(String::new());
        assert_eq!(verify(&rows, None).unwrap().id, 4, "NULL and empty differ");

        let mut rows = chain(5);
        rows.swap(1, 2);
        assert!(verify(&rows, None).is_some());
    }

    #[test]
    fn pruned_chain_starts_at_anchor() {
        let base = chain(5);
        let anchor = Anchor {
            last_id: 2,
            last_hash: base[1].hash.clone().unwrap(),
        };
        let rows = chain_with_prune(5, 3, &anchor);
        assert_eq!(verify(&rows[2..], Some(&anchor)), None);
        assert_eq!(verify(&rows[3..], Some(&anchor)).unwrap().id, 4);
    }

    #[test]
    fn a_forged_anchor_is_found() {
        // Rows 1 and 2 deleted and an anchor written that fits row 3, with no AUDIT_PRUNE
        // row vouching for it.
        let rows = chain(5);
        let forged = Anchor {
            last_id: 2,
            last_hash: rows[1].hash.clone().unwrap(),
        };
        let b = verify(&rows[2..], Some(&forged)).unwrap();
        assert_eq!(b.id, 3);
        assert!(b.reason.contains("prune anchor"), "{}", b.reason);
    }

    #[test]
    fn hashes_are_unambiguous() {
        let a = chain_hash(
            GENESIS,
            1,
            "t",
            "OP",
            Some("ab"),
            Some("c"),
            None,
            None,
            None,
        );
        let b = chain_hash(
            GENESIS,
            1,
            "t",
            "OP",
            Some("a"),
            Some("bc"),
            None,
            None,
            None,
        );
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn operations_parse() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(&op.as_str().to_lowercase()), Some(*op));
        }
        assert_eq!(Operation::parse("NOPE"), None);
    }
}
