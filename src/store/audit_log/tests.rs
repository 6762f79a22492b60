//! The chain against tampering with the database file itself: every stored field of a
//! row, and rows inserted in the middle or appended, are found where the chain breaks.
//! The tampering is done as an attacker would, through a connection of its own that drops
//! the trigger keeping audit rows from being updated.

use chrono::{TimeZone, Utc};
use rusqlite::{Connection, params};
use serde_json::json;

use crate::audit::{AuditEvent, Break, GENESIS, Operation, chain_hash};
use crate::store::Store;

const CHANGED: &str = "its content does not match its hash";
const UNLINKED: &str = "does not link to the row before it";

/// A database with six chained rows. Row 4 has every field set (identity, details, a
/// failure and its message), so each can be changed or removed.
struct Log {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Log {
    fn new() -> Log {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imm.db");
        let mut store = Store::open(&path).unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 2, 3, 9, 0, 0).unwrap();
        let ann = "ann@contoso.com";
        let events = [
            AuditEvent::new(Operation::Connect),
            AuditEvent::new(Operation::ListMailboxes).details(json!({"rows": 12})),
            AuditEvent::new(Operation::GetMailboxDetails)
                .identity(ann)
                .details(json!({"guid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6"})),
            AuditEvent::new(Operation::ExportData)
                .identity(ann)
                .details(json!({"rows": 3, "file": "inactive.csv"}))
                .failed("the disk is full"),
            AuditEvent::new(Operation::RemoveHold)
                .identity(ann)
                .details(json!({"hold": "UniH7d3e1f2a"})),
            AuditEvent::new(Operation::AuditList),
        ];
        for (i, e) in events.iter().enumerate() {
            store
                .audit(e, t0 + chrono::Duration::seconds(i as i64))
                .unwrap();
        }
        let log = Log { _dir: dir, path };
        assert_eq!(log.first_break(), None);
        let conn = log.attacker();
        let row4: (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = conn
            .query_row(
                "SELECT identity, user, result, error_message FROM audit_log WHERE id = 4",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert!(row4.0.is_some() && row4.1.is_some() && row4.3.is_some());
        assert_eq!(row4.2.as_deref(), Some("failure"));
        log
    }

    /// A connection of its own, without the append-only trigger.
    fn attacker(&self) -> Connection {
        let conn = Connection::open(&self.path).unwrap();
        conn.execute_batch("DROP TRIGGER IF EXISTS audit_log_append_only;")
            .unwrap();
        conn
    }

    /// Where verification, by a process that opens the database afresh, finds the chain
    /// broken.
    fn first_break(&self) -> Option<Break> {
        Store::open(&self.path)
            .unwrap()
            .verify_audit()
            .unwrap()
            .first_break
    }

    fn text(&self, column: &str, id: i64) -> Option<String> {
        self.attacker()
            .query_row(
                &format!("SELECT {column} FROM audit_log WHERE id = ?1"),
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Sets one column of one row and returns where the chain breaks.
    fn tamper(&self, id: i64, column: &str, value: Option<&str>) -> Break {
        let n = self
            .attacker()
            .execute(
                &format!("UPDATE audit_log SET {column} = ?1 WHERE id = ?2"),
                params![value, id],
            )
            .unwrap();
        assert_eq!(n, 1);
        self.first_break()
            .unwrap_or_else(|| panic!("{column} of row {id} set to {value:?} went unnoticed"))
    }
}

fn assert_break(b: &Break, id: i64, reason: &str, what: &str) {
    assert_eq!(b.id, id, "{what}: {b:?}");
    assert!(b.reason.contains(reason), "{what}: {b:?}");
}

#[test]
fn changing_any_content_field_breaks_the_chain_at_that_row() {
    let t = Log::new().text("timestamp", 4).unwrap();
    let later = t.replace(".000000Z", ".000001Z");
    assert_ne!(later, t);
    let details = Log::new().text("details", 4).unwrap();
    for (column, value) in [
        ("timestamp", Some(later.as_str())),
        ("operation", Some("LIST_MAILBOXES")),
        ("identity", Some("bob@contoso.com")),
        ("identity", None),
        ("user", Some("mallory")),
        ("user", None),
        (
            "details",
            Some(&*details.replace("\"rows\":3", "\"rows\":30")),
        ),
        ("details", Some("{}")),
        ("details", None),
        ("result", Some("success")),
        ("result", None),
        ("error_message", Some("")),
        ("error_message", None),
    ] {
        let b = Log::new().tamper(4, column, value);
        assert_break(&b, 4, CHANGED, &format!("{column} = {value:?}"));
    }
}

#[test]
fn a_changed_prev_hash_breaks_the_chain_at_that_row() {
    let log = Log::new();
    let elsewhere = log.text("hash", 2);
    let b = log.tamper(4, "prev_hash", elsewhere.as_deref());
    assert_break(&b, 4, UNLINKED, "prev_hash of row 2");
    for value in [Some(GENESIS), Some(""), None] {
        let b = Log::new().tamper(4, "prev_hash", value);
        assert_break(&b, 4, UNLINKED, &format!("prev_hash = {value:?}"));
    }
    // Its own hash changed to fit nothing is the same as changed content.
    let b = Log::new().tamper(4, "hash", Some(GENESIS));
    assert_break(&b, 4, CHANGED, "hash");
}

#[test]
fn a_changed_id_breaks_the_chain_at_that_row() {
    // The newest row renumbered still follows its predecessor and links to it: only the
    // id in its hash gives it away.
    let b = Log::new().tamper(6, "id", Some("7"));
    assert_break(&b, 7, CHANGED, "id 6 -> 7");
    let b = Log::new().tamper(6, "id", Some("1000"));
    assert_break(&b, 1000, CHANGED, "id 6 -> 1000");
    // A row moved to the end leaves a gap its successor does not link across.
    let b = Log::new().tamper(4, "id", Some("40"));
    assert_break(&b, 5, UNLINKED, "id 4 -> 40");
    // A row moved to the front: ids start after 0, and it would not link to the genesis
    // hash either.
    let b = Log::new().tamper(4, "id", Some("0"));
    assert_break(&b, 0, "does not follow", "id 4 -> 0");
}

/// The fields of a row to insert, as an attacker would write them.
struct Forged<'a> {
    id: i64,
    timestamp: &'a str,
    prev_hash: &'a str,
    hash: &'a str,
}

const FORGED_OP: &str = "RESTORE_MAILBOX";
const FORGED_IDENTITY: &str = "ceo@contoso.com";
const FORGED_DETAILS: &str = "{}";

fn forged_hash(prev: &str, id: i64, timestamp: &str) -> String {
    chain_hash(
        prev,
        id,
        timestamp,
        FORGED_OP,
        Some(FORGED_IDENTITY),
        Some("mallory"),
        Some(FORGED_DETAILS),
        Some("success"),
        None,
    )
}

fn insert(conn: &Connection, row: &Forged<'_>) {
    conn.execute(
        "INSERT INTO audit_log (id, timestamp, operation, identity, user, details, result,
                                error_message, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, 'mallory', ?5, 'success', NULL, ?6, ?7)",
        params![
            row.id,
            row.timestamp,
            FORGED_OP,
            FORGED_IDENTITY,
            FORGED_DETAILS,
            row.prev_hash,
            row.hash
        ],
    )
    .unwrap();
}

/// Makes room for a row at id 4: rows 4 to 6 become 5 to 7, as they are.
fn make_room_at_4(conn: &Connection) {
    conn.execute_batch(
        "UPDATE audit_log SET id = id + 1000 WHERE id >= 4;
         UPDATE audit_log SET id = id - 999 WHERE id >= 1000;",
    )
    .unwrap();
}

#[test]
fn a_row_inserted_in_the_middle_is_found() {
    // Linked to the row before it, but hashed as if it began a chain of its own.
    let log = Log::new();
    let conn = log.attacker();
    let prev = log.text("hash", 3).unwrap();
    let ts = log.text("timestamp", 4).unwrap();
    make_room_at_4(&conn);
    let hash = forged_hash(GENESIS, 4, &ts);
    insert(
        &conn,
        &Forged {
            id: 4,
            timestamp: &ts,
            prev_hash: &prev,
            hash: &hash,
        },
    );
    let b = log.first_break().expect("an inserted row went unnoticed");
    assert_break(&b, 4, CHANGED, "inserted with a hash off the chain");

    // Hashed onto the row before it as the program would: the next row gives it away.
    let log = Log::new();
    let conn = log.attacker();
    let prev = log.text("hash", 3).unwrap();
    let ts = log.text("timestamp", 4).unwrap();
    make_room_at_4(&conn);
    let hash = forged_hash(&prev, 4, &ts);
    insert(
        &conn,
        &Forged {
            id: 4,
            timestamp: &ts,
            prev_hash: &prev,
            hash: &hash,
        },
    );
    let b = log.first_break().expect("an inserted row went unnoticed");
    assert_break(&b, 5, UNLINKED, "inserted and chained");
}

#[test]
fn a_row_appended_with_a_wrong_hash_is_found() {
    const LATER: &str = "2026-02-03T09:00:10.000000Z";
    /// The hash of the row appended, given the head it links to.
    type Forge = fn(&str) -> String;
    let cases: [(&str, Forge); 3] = [
        // Hashed over another chain's predecessor.
        ("from the genesis hash", |_| forged_hash(GENESIS, 7, LATER)),
        // Hashed over the right predecessor but for another id.
        ("for another id", |prev| forged_hash(prev, 8, LATER)),
        // Not a hash of anything.
        ("made up", |_| "ab".repeat(32)),
    ];
    for (what, hash) in cases {
        let log = Log::new();
        let head = log.text("hash", 6).unwrap();
        insert(
            &log.attacker(),
            &Forged {
                id: 7,
                timestamp: LATER,
                prev_hash: &head,
                hash: &hash(&head),
            },
        );
        let b = log.first_break().expect("an appended row went unnoticed");
        assert_break(&b, 7, CHANGED, what);
    }
    // One appended with a stale link, even with its own hash right.
    let log = Log::new();
    let stale = log.text("hash", 5).unwrap();
    insert(
        &log.attacker(),
        &Forged {
            id: 7,
            timestamp: LATER,
            prev_hash: &stale,
            hash: &forged_hash(&stale, 7, LATER),
        },
    );
    let b = log.first_break().expect("an appended row went unnoticed");
    assert_break(&b, 7, UNLINKED, "linked to row 5");
}
