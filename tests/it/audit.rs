//! The audit log: every operation leaves a row, the chain detects tampering, prune keeps
//! it verifiable.

use chrono::{Duration, Utc};
use imm_daemon::audit::{AuditEvent, Operation};
use imm_daemon::store::Store;
use serde_json::{Value, json};

use crate::support::{Env, G1, days_ago_ms, record};

fn with_rows(n: usize) -> Env {
    let env = Env::new();
    env.import(&[record(G1, "Ann", "ann@contoso.com", days_ago_ms(100))]);
    for _ in 1..n {
        env.ok(&["mailboxes", "list", "--format", "json"]);
    }
    env
}

#[test]
fn every_operation_is_audited_with_user_and_utc_time() {
    let env = with_rows(1);
    env.ok(&["mailboxes", "search", "ann", "--format", "json"]);
    env.ok(&["mailboxes", "show", G1, "--format", "json"]);
    env.ok(&["mailboxes", "stats", "--format", "json"]);
    let rows = env.json(&["audit", "list"]);
    let ops: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "IMPORT_MAILBOXES",
            "LIST_MAILBOXES",
            "GET_MAILBOX_DETAILS",
            "LIST_MAILBOXES"
        ]
    );
    let first = &rows[0];
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
    chrono::DateTime::parse_from_rfc3339(first["timestamp"].as_str().unwrap()).unwrap();
    assert!(!first["user"].as_str().unwrap().is_empty());
    assert_eq!(first["result"], "success");
    assert_eq!(first["details"]["records"], 1);
    assert_eq!(first["hash"].as_str().unwrap().len(), 64);
    // `audit list` audits itself too.
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE operation = 'AUDIT_LIST'"),
        1
    );
}

#[test]
fn an_operation_whose_audit_row_cannot_be_written_fails() {
    let env = with_rows(1);
    env.open_db()
        .execute_batch(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit disk full'); END;",
        )
        .unwrap();
    env.fails(&["mailboxes", "list", "--format", "json"], 1);
    let p = env.write(
        "more.json",
        serde_json::to_vec(&[record(
            "55555555-5555-4555-8555-555555555555",
            "New",
            "new@contoso.com",
            days_ago_ms(40),
        )])
        .unwrap(),
    );
    env.fails(&["mailboxes", "import", p.to_str().unwrap(), "--merge"], 1);
    assert_eq!(
        env.count("SELECT count(*) FROM inactive_mailboxes"),
        1,
        "the import rolled back with its audit row"
    );
}

#[test]
fn intact_chain_verifies() {
    let env = with_rows(5);
    let out = env.ok(&["audit", "verify"]);
    assert!(
        out.starts_with("audit chain intact: 5 row(s) verified, head "),
        "{out}"
    );
    let v: Value = serde_json::from_str(&env.ok(&["audit", "verify", "--json"])).unwrap();
    assert_eq!(v["intact"], true);
    assert_eq!(v["rows_checked"], 6, "the first verify added a row");
}

#[test]
fn tampering_is_found_at_the_right_row() {
    // Changed content.
    let env = with_rows(6);
    let conn = env.open_db();
    conn.execute_batch(
        "DROP TRIGGER audit_log_append_only;
         UPDATE audit_log SET user = 'mallory' WHERE id = 4;",
    )
    .unwrap();
    let out = env.cmd().args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("broken at row 4") && text.contains("changed"),
        "{text}"
    );

    // A deleted row is named by the row after it.
    let env = with_rows(6);
    env.open_db()
        .execute("DELETE FROM audit_log WHERE id = 3", [])
        .unwrap();
    let out = env
        .cmd()
        .args(["audit", "verify", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["first_break"]["id"], 4);
    assert!(
        v["first_break"]["reason"]
            .as_str()
            .unwrap()
            .contains("removed")
    );

    // A forged row with a recomputed hash still breaks the link of the next row.
    let env = with_rows(6);
    let conn = env.open_db();
    conn.execute_batch("DROP TRIGGER audit_log_append_only;")
        .unwrap();
    let (prev, ts): (String, String) = conn
        .query_row(
            "SELECT prev_hash, timestamp FROM audit_log WHERE id = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let forged = imm_daemon::audit::chain_hash(
        &prev,
        2,
        &ts,
        "LIST_MAILBOXES",
        None,
        Some("mallory"),
        Some("{}"),
        Some("success"),
        None,
    );
    conn.execute(
        "UPDATE audit_log SET user = 'mallory', details = '{}', hash = ?1 WHERE id = 2",
        [&forged],
    )
    .unwrap();
    let v: Value = serde_json::from_slice(
        &env.cmd()
            .args(["audit", "verify", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(v["first_break"]["id"], 3);
    // The failed verification is itself audited.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log WHERE operation = 'AUDIT_VERIFY' AND result = 'failure'"
        ),
        1
    );
}

#[test]
fn audit_rows_cannot_be_updated_in_place() {
    let env = with_rows(2);
    let err = env
        .open_db()
        .execute("UPDATE audit_log SET user = 'x' WHERE id = 1", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[test]
fn prune_keeps_the_chain_verifiable() {
    let env = Env::new();
    let mut store = Store::open(&env.db()).unwrap();
    let now = Utc::now();
    for days in [800, 700, 400, 10, 1] {
        store
            .audit(
                &AuditEvent::new(Operation::Connect).details(json!({"days_ago": days})),
                now - Duration::days(days),
            )
            .unwrap();
    }
    drop(store);
    let out = env.ok(&["audit", "prune", "--older-than", "365d"]);
    assert!(out.contains("pruned 3 audit row(s)"), "{out}");
    assert!(out.contains("starts after row 3"), "{out}");
    let left = env.json(&["audit", "list"]);
    let kept: Vec<i64> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        kept,
        [4, 5, 6],
        "two old enough to keep, plus the AUDIT_PRUNE row"
    );
    assert_eq!(left[2]["operation"], "AUDIT_PRUNE");
    assert_eq!(left[2]["details"]["pruned_rows"], 3);
    let out = env.ok(&["audit", "verify"]);
    assert!(out.contains("intact"), "{out}");
    // Pruning again with nothing old enough changes nothing but still verifies.
    assert!(
        env.ok(&["audit", "prune", "--older-than", "365d"])
            .contains("pruned 0")
    );
    env.ok(&["audit", "verify"]);
    // Deleting the oldest kept row is detected against the anchor.
    env.open_db()
        .execute("DELETE FROM audit_log WHERE id = 4", [])
        .unwrap();
    let out = env.cmd().args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stdout).contains("row 5"));
}

#[test]
fn list_filters_and_export() {
    let env = Env::new();
    let mut store = Store::open(&env.db()).unwrap();
    let now = Utc::now();
    store
        .audit(
            &AuditEvent::new(Operation::Connect),
            now - Duration::days(20),
        )
        .unwrap();
    store
        .audit(
            &AuditEvent::new(Operation::GetMailboxDetails).identity(G1),
            now - Duration::days(5),
        )
        .unwrap();
    store
        .audit(
            &AuditEvent::new(Operation::Error).failed("something broke"),
            now - Duration::days(1),
        )
        .unwrap();
    drop(store);
    let ids = |args: &[&str]| -> Vec<i64> {
        let mut a = vec!["audit", "list"];
        a.extend(args);
        env.json(&a)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&["--since", "7d"]), [2, 3]);
    assert_eq!(ids(&["--until", "7d"]), [1]);
    assert_eq!(ids(&["--identity", G1]), [2]);
    assert_eq!(ids(&["--operation", "error"]), [3]);
    assert_eq!(ids(&["--limit", "1"]), [1]);
    let since = (now - Duration::days(6)).format("%Y-%m-%d").to_string();
    assert_eq!(
        ids(&["--since", &since, "--operation", "GET_MAILBOX_DETAILS"]),
        [2]
    );
    env.fails(&["audit", "list", "--since", "last tuesday"], 2);
    env.fails(&["audit", "list", "--operation", "DANCE"], 2);

    let file = env.home.path().join("audit.json");
    let out = env.ok(&[
        "audit",
        "export",
        "--since",
        "30d",
        "--until",
        "2d",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.contains("exported 2 audit row(s)"), "{out}");
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["operation"], "CONNECT");
    let exports = env.json(&["audit", "list", "--operation", "EXPORT_DATA"]);
    assert_eq!(exports[0]["details"]["count"], 2);
    assert_eq!(exports[0]["details"]["what"], "audit_log");
}

#[test]
fn a_forged_prune_anchor_is_found() {
    // Deleting the oldest rows and writing an anchor that fits the first remaining one
    // must not pass: no chained AUDIT_PRUNE row vouches for it.
    let env = with_rows(6);
    let conn = env.open_db();
    let prev: String = conn
        .query_row("SELECT prev_hash FROM audit_log WHERE id = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute("DELETE FROM audit_log WHERE id < 3", [])
        .unwrap();
    conn.execute(
        "INSERT INTO audit_anchor (id, last_id, last_hash, pruned_rows, pruned_at) VALUES (1, 2, ?1, 2, 'x')",
        [&prev],
    )
    .unwrap();
    let out = env.cmd().args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("row 3") && text.contains("prune anchor"),
        "{text}"
    );
}

#[test]
fn prune_refuses_to_erase_evidence_of_tampering() {
    let env = Env::new();
    let mut store = Store::open(&env.db()).unwrap();
    let now = Utc::now();
    for days in [800, 700, 10] {
        store
            .audit(
                &AuditEvent::new(Operation::Connect),
                now - Duration::days(days),
            )
            .unwrap();
    }
    drop(store);
    env.open_db()
        .execute_batch(
            "DROP TRIGGER audit_log_append_only; UPDATE audit_log SET user = 'mallory' WHERE id = 1;",
        )
        .unwrap();
    let err = env.fails(&["audit", "prune", "--older-than", "365d"], 5);
    assert!(
        err.contains("broken at row 1") && err.contains("nothing was pruned"),
        "{err}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE operation = 'CONNECT'"),
        3
    );
}
