//! The SQLite store on real files: migrations, refusal of newer databases, operations.

use chrono::{TimeZone, Utc};
use imm_daemon::config::InventoryConfig;
use imm_daemon::inventory::{ExoMailbox, InactiveMailbox};
use imm_daemon::store::{MailboxFilter, SCHEMA_VERSION, Store, StoreError};
use serde_json::json;

use crate::support::{Env, G1, G2, G3, ORIGINAL_COLUMNS, mode};

/// The schema of the original design, as its tool created it (no schema version).
const ORIGINAL_SCHEMA: &str = "
CREATE TABLE inactive_mailboxes (identity TEXT PRIMARY KEY, display_name TEXT,
    primary_smtp TEXT, when_soft_deleted TEXT, age_days INTEGER, size_mb REAL,
    item_count INTEGER, license_type TEXT, monthly_cost REAL, hold_types TEXT,
    recovery_eligible INTEGER, recovery_blockers TEXT, operating_company TEXT,
    department TEXT, last_updated TEXT);
CREATE TABLE audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL,
    operation TEXT NOT NULL, identity TEXT, user TEXT, details TEXT, result TEXT,
    error_message TEXT);
INSERT INTO inactive_mailboxes VALUES ('11111111-1111-4111-8111-111111111111', 'Old Row',
    'Old.Row@Contoso.com', '2023-01-01T00:00:00', 100, 12.5, 40, 'E3', 36.0,
    '[\"litigation\"]', 1, '[]', 'Contoso', 'Sales', '2023-04-11T00:00:00');
INSERT INTO audit_log (timestamp, operation, user, details, result)
    VALUES ('2023-04-11T00:00:00Z', 'CONNECT', 'admin', '{}', 'success'),
           ('2023-04-11T00:01:00Z', 'LIST_MAILBOXES', 'admin', '{}', 'success');
";

fn names(conn: &rusqlite::Connection, kind: &str) -> Vec<String> {
    let mut st = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = ?1 ORDER BY name")
        .unwrap();
    st.query_map([kind], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn fresh_database_has_the_designed_schema() {
    let env = Env::new();
    let store = Store::open(&env.db()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    drop(store);
    assert_eq!(mode(&env.db()), 0o600);
    let conn = env.open_db();
    let tables = names(&conn, "table");
    for t in ["inactive_mailboxes", "audit_log", "audit_anchor"] {
        assert!(tables.contains(&t.to_string()), "{tables:?}");
    }
    let idx = names(&conn, "index");
    for i in [
        "idx_mailboxes_smtp",
        "idx_mailboxes_deleted",
        "idx_audit_timestamp",
    ] {
        assert!(idx.contains(&i.to_string()), "{idx:?}");
    }
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('inactive_mailboxes')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for c in ORIGINAL_COLUMNS {
        assert!(cols.contains(&c.to_string()), "missing {c}");
    }
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

#[test]
fn migrates_a_database_of_the_original_tool() {
    let env = Env::new();
    std::fs::create_dir_all(env.db().parent().unwrap()).unwrap();
    env.open_db().execute_batch(ORIGINAL_SCHEMA).unwrap();
    let store = Store::open(&env.db()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let m = store
        .find_mailboxes("old.row@contoso.com")
        .unwrap()
        .pop()
        .expect("row kept");
    assert_eq!(m.display_name.as_deref(), Some("Old Row"));
    assert_eq!(m.hold_types.len(), 1);
    drop(store);
    // The old audit rows were sealed into the chain, which the binary verifies.
    let out = env.ok(&["audit", "verify"]);
    assert!(out.contains("intact: 2 row(s)"), "{out}");
    let hits = env.json(&["mailboxes", "search", "old row"]);
    assert_eq!(hits.as_array().unwrap().len(), 1);
    // A row whose hold list is not JSON (written by hand or by another tool) neither
    // breaks a --hold filter nor matches it.
    env.open_db()
        .execute(
            "INSERT INTO inactive_mailboxes (identity, display_name, hold_types) VALUES ('x', 'Odd', 'Litigation Hold')",
            [],
        )
        .unwrap();
    let held = env.json(&["mailboxes", "list", "--hold", "litigation"]);
    assert_eq!(held.as_array().unwrap().len(), 1);
    assert_eq!(held[0]["display_name"], "Old Row");
}

#[test]
fn migrates_a_version_1_database() {
    let env = Env::new();
    std::fs::create_dir_all(env.db().parent().unwrap()).unwrap();
    {
        let conn = env.open_db();
        conn.execute_batch(ORIGINAL_SCHEMA).unwrap();
        conn.execute_batch(
            "CREATE INDEX idx_mailboxes_smtp ON inactive_mailboxes(primary_smtp);
             CREATE INDEX idx_mailboxes_deleted ON inactive_mailboxes(when_soft_deleted);
             CREATE INDEX idx_audit_timestamp ON audit_log(timestamp);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = Store::open(&env.db()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.all_mailboxes().unwrap().len(), 1);
    drop(store);
    env.ok(&["audit", "verify"]);
}

#[test]
fn newer_database_is_refused_and_left_untouched() {
    let env = Env::new();
    drop(Store::open(&env.db()).unwrap());
    env.open_db()
        .execute_batch("PRAGMA journal_mode = DELETE; PRAGMA user_version = 99;")
        .unwrap();
    let before = std::fs::read(env.db()).unwrap();
    match Store::open(&env.db()) {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a newer database was opened"),
    }
    let err = env.fails(&["mailboxes", "list"], 69);
    assert!(
        err.contains("newer imm-daemon") && err.contains("99"),
        "{err}"
    );
    assert!(
        std::fs::read(env.db()).unwrap() == before,
        "not one byte changed"
    );
}

#[test]
fn newer_database_with_a_live_wal_is_not_checkpointed() {
    let env = Env::new();
    drop(Store::open(&env.db()).unwrap());
    {
        // Leave committed changes in the WAL, as a newer imm-daemon killed mid-run would.
        let conn = env.open_db();
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
        conn.execute_batch("PRAGMA user_version = 99; CREATE TABLE from_the_future (x);")
            .unwrap();
    }
    let wal = env.db().with_extension("db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    let main_before = std::fs::read(env.db()).unwrap();
    env.fails(&["mailboxes", "list"], 69);
    assert!(
        std::fs::read(env.db()).unwrap() == main_before,
        "main file untouched"
    );
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the WAL was not checkpointed"
    );
}

#[test]
fn foreign_database_is_refused() {
    let env = Env::new();
    std::fs::create_dir_all(env.db().parent().unwrap()).unwrap();
    env.open_db()
        .execute_batch("PRAGMA application_id = 1234; CREATE TABLE t(x);")
        .unwrap();
    let err = env.fails(&["mailboxes", "list"], 69);
    assert!(err.contains("not an imm-daemon database"), "{err}");
    let garbage = env.write(
        "data/imm-daemon.db",
        b"this is not sqlite at all, not even close....",
    );
    let err = env.fails(&["mailboxes", "list"], 69);
    assert!(err.contains(garbage.to_str().unwrap()), "{err}");
}

fn mailbox(guid: &str, name: &str, smtp: &str) -> InactiveMailbox {
    let rec = json!({"ExchangeGuid": guid, "DisplayName": name, "PrimarySmtpAddress": smtp,
                     "WhenSoftDeleted": "2024-01-01T00:00:00Z", "InPlaceHolds": ["UniHx"]});
    let cfg = InventoryConfig::default();
    let raw = ExoMailbox::from_fields(&cfg, |k| rec.get(k)).unwrap();
    InactiveMailbox::build(
        raw,
        &cfg,
        Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
    )
}

#[test]
fn store_operations() {
    let env = Env::new();
    let mut store = Store::open(&env.db()).unwrap();
    let n = store
        .write(|tx| {
            tx.upsert_mailbox(&mailbox(G1, "Ärger Ölmann", "aerger@contoso.com"))?;
            tx.upsert_mailboxes(&[
                mailbox(G2, "Bob Builder", "bob@contoso.com"),
                mailbox(G3, "Carol", "carol@fabrikam.com"),
            ])
        })
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(store.all_mailboxes().unwrap().len(), 3);
    // Upserting again replaces rather than duplicates.
    store
        .write(|tx| tx.upsert_mailbox(&mailbox(G2, "Bob Renamed", "bob@contoso.com")))
        .unwrap();
    assert_eq!(store.all_mailboxes().unwrap().len(), 3);
    assert_eq!(
        store.find_mailboxes(G2).unwrap()[0].display_name.as_deref(),
        Some("Bob Renamed")
    );
    assert_eq!(
        store.find_mailboxes("BOB@contoso.com").unwrap()[0].identity,
        G2
    );
    assert_eq!(
        store.find_mailboxes(&G3.to_uppercase()).unwrap()[0].identity,
        G3
    );
    assert!(
        store
            .find_mailboxes("nobody@contoso.com")
            .unwrap()
            .is_empty()
    );
    let search = |q: &str| {
        store
            .mailboxes(&MailboxFilter {
                text: Some(q.into()),
                ..Default::default()
            })
            .unwrap()
            .len()
    };
    assert_eq!(search("ÄRGER"), 1, "case folding beyond ASCII");
    assert_eq!(search("CONTOSO"), 2);
    assert_eq!(search("%"), 0, "no LIKE wildcards");
    let stats = store.mailbox_stats().unwrap();
    assert_eq!(stats.count, 3);
    assert!(stats.file_size_bytes > 0);
    assert_eq!(
        stats.oldest_update.as_deref(),
        Some("2025-01-01T00:00:00.000Z")
    );
    assert_eq!(store.write(|tx| tx.clear_mailboxes()).unwrap(), 3);
    assert_eq!(store.mailbox_stats().unwrap().count, 0);
}

#[test]
fn a_failed_write_leaves_nothing() {
    let env = Env::new();
    let mut store = Store::open(&env.db()).unwrap();
    let r: Result<(), StoreError> = store.write(|tx| {
        tx.upsert_mailbox(&mailbox(G1, "A", "a@contoso.com"))?;
        Err(StoreError::Sql(rusqlite::Error::InvalidQuery))
    });
    assert!(r.is_err());
    assert!(store.all_mailboxes().unwrap().is_empty());
}
