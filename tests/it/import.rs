//! `mailboxes import` of real PowerShell export shapes, through the real binary.

use serde_json::json;

use crate::support::{Env, G1, G2, G3, days_ago_ms, record};

fn utf16le_bom(s: &str) -> Vec<u8> {
    let mut v = vec![0xFF, 0xFE];
    v.extend(s.encode_utf16().flat_map(|u| u.to_le_bytes()));
    v
}

#[test]
fn windows_powershell_json_with_date_literals() {
    let env = Env::new();
    // Windows PowerShell escapes the slashes: "\/Date(...)\/".
    let text = format!(
        r#"[{{"ExchangeGuid":"{G1}","DisplayName":"Ann","WhenSoftDeleted":"\/Date(1690000000000)\/","InPlaceHolds":["UniH1"],"TotalItemSize":"3.233 GB (3,471,471,173 bytes)","ItemCount":12}},
           {{"ExchangeGuid":"{G2}","DisplayName":"Ben","WhenSoftDeleted":"\/Date(1690000000000+0200)\/"}}]"#
    );
    let p = env.write("ps51.json", text);
    let out = env.ok(&["mailboxes", "import", p.to_str().unwrap()]);
    assert!(out.contains("imported 2 mailbox(es)"), "{out}");
    let ann = env.json(&["mailboxes", "show", G1]);
    assert_eq!(ann["when_soft_deleted"], "2023-07-22T04:26:40Z");
    assert_eq!(ann["size_bytes"], 3_471_471_173u64);
    assert_eq!(ann["item_count"], 12);
    assert_eq!(ann["hold_types"], json!(["ediscovery"]));
    let ben = env.json(&["mailboxes", "show", G2]);
    assert_eq!(ben["when_soft_deleted"], "2023-07-22T04:26:40Z");
}

#[test]
fn powershell_7_json_single_object_utf8_bom() {
    let env = Env::new();
    let text = format!(
        "\u{feff}{{\"ExchangeGuid\":\"{G1}\",\"DisplayName\":\"Zoë\",\"WhenSoftDeleted\":\"2023-07-22T06:26:40.123+02:00\",\"LitigationHoldEnabled\":true}}"
    );
    let p = env.write("ps7.json", text);
    env.ok(&["mailboxes", "import", p.to_str().unwrap()]);
    let m = env.json(&["mailboxes", "show", G1]);
    assert_eq!(m["display_name"], "Zoë");
    assert_eq!(m["when_soft_deleted"], "2023-07-22T04:26:40.123Z");
    assert_eq!(m["hold_types"], json!(["litigation"]));
}

const CSV: &str = "#TYPE Deserialized.Microsoft.Exchange.Data.Directory.Management.Mailbox\r\n\
\"DisplayName\",\"ExchangeGuid\",\"PrimarySmtpAddress\",\"WhenSoftDeleted\",\"InPlaceHolds\",\"LitigationHoldEnabled\",\"DelayHoldApplied\",\"TotalItemSize\"\r\n\
\"Ann, Smith\",\"11111111-1111-4111-8111-111111111111\",\"ann@contoso.com\",\"7/22/2023 4:26:40 AM\",\"UniHabc mbx0f:1 -mbx1e:1\",\"True\",\"False\",\"1 MB (1,048,576 bytes)\"\r\n\
\"Ben\",\"22222222-2222-4222-8222-222222222222\",\"ben@contoso.com\",\"07/22/2023 04:26:40\",\"\",\"False\",\"True\",\"\"\r\n";

#[test]
fn export_csv_with_type_line() {
    let env = Env::new();
    let p = env.write("mb.csv", CSV);
    env.ok(&["mailboxes", "import", p.to_str().unwrap()]);
    let ann = env.json(&["mailboxes", "show", "ann@contoso.com"]);
    assert_eq!(ann["display_name"], "Ann, Smith");
    assert_eq!(ann["when_soft_deleted"], "2023-07-22T04:26:40Z");
    assert_eq!(
        ann["hold_types"],
        json!(["litigation", "ediscovery", "retention_policy"])
    );
    assert_eq!(ann["size_mb"], 1.0);
    let ben = env.json(&["mailboxes", "show", "ben@contoso.com"]);
    assert_eq!(ben["hold_types"], json!(["delay"]));
}

#[test]
fn utf16_le_csv_and_json() {
    let env = Env::new();
    let p = env.write("mb16.csv", utf16le_bom(CSV));
    env.ok(&["mailboxes", "import", p.to_str().unwrap()]);
    assert_eq!(
        env.json(&["mailboxes", "list"]).as_array().unwrap().len(),
        2
    );
    let json = serde_json::to_string(&[record(G3, "Çelik", "celik@contoso.com", days_ago_ms(40))])
        .unwrap();
    let p = env.write("mb16.json", utf16le_bom(&json));
    let out = env.ok(&["mailboxes", "import", p.to_str().unwrap()]);
    assert!(out.contains("removed 2"), "{out}");
    let list = env.json(&["mailboxes", "list"]);
    assert_eq!(list[0]["display_name"], "Çelik");
}

#[test]
fn invalid_files_write_nothing_and_name_the_record() {
    let env = Env::new();
    env.import(&[record(G1, "Kept", "kept@contoso.com", days_ago_ms(100))]);
    let before = env.count("SELECT count(*) FROM inactive_mailboxes");
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        (
            serde_json::to_string(&[
                record(G2, "Good", "good@contoso.com", days_ago_ms(50)),
                json!({"DisplayName": "No guid"}),
            ])
            .unwrap(),
            "bad1.json",
            vec!["record 2", "ExchangeGuid"],
        ),
        (
            serde_json::to_string(&[
                record(G2, "Good", "good@contoso.com", days_ago_ms(50)),
                record(G3, "Bad", "bad@contoso.com", 0),
                {
                    let mut r = record(G3, "Bad", "bad@contoso.com", 0);
                    r["ExchangeGuid"] = json!("44444444-4444-4444-8444-444444444444");
                    r["WhenSoftDeleted"] = json!("last tuesday");
                    r
                },
            ])
            .unwrap(),
            "bad2.json",
            vec!["record 3", "WhenSoftDeleted", "last tuesday"],
        ),
        (
            format!("ExchangeGuid,WhenSoftDeleted\n{G2},2023-01-01\n{G3},31.12.2023\n"),
            "bad3.csv",
            vec!["record 2", "line 3", "WhenSoftDeleted"],
        ),
        (
            "{\"ExchangeGuid\": [".into(),
            "bad4.json",
            vec!["invalid JSON"],
        ),
        (
            "Name,Size\nx,1\n".into(),
            "bad5.csv",
            vec!["no ExchangeGuid column"],
        ),
        (String::new(), "bad6.json", vec!["empty"]),
    ];
    for (text, name, needles) in cases {
        let p = env.write(name, text);
        let err = env.fails(&["mailboxes", "import", p.to_str().unwrap()], 65);
        for n in needles {
            assert!(err.contains(n), "{name}: missing `{n}` in {err}");
        }
        assert!(err.contains(name), "the file is named: {err}");
        assert_eq!(
            env.count("SELECT count(*) FROM inactive_mailboxes"),
            before,
            "{name}"
        );
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM inactive_mailboxes WHERE identity = '{G1}' AND display_name = 'Kept'"
            )),
            1,
            "{name}: the cached mailbox is untouched"
        );
    }
    // Each failed import is audited as a failure.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log WHERE operation = 'IMPORT_MAILBOXES' AND result = 'failure'"
        ),
        6
    );
    let err = env.fails(&["mailboxes", "import", "/nonexistent/export.json"], 66);
    assert!(err.contains("/nonexistent/export.json"), "{err}");
}

#[test]
fn snapshot_import_removes_absent_mailboxes_and_merge_keeps_them() {
    let env = Env::new();
    env.import(&[
        record(G1, "One", "one@contoso.com", days_ago_ms(100)),
        record(G2, "Two", "two@contoso.com", days_ago_ms(100)),
    ]);
    let p = env.write(
        "snap.json",
        serde_json::to_vec(&[
            record(G2, "Two", "two@contoso.com", days_ago_ms(100)),
            record(G3, "Three", "three@contoso.com", days_ago_ms(10)),
        ])
        .unwrap(),
    );
    let out = env.ok(&["mailboxes", "import", p.to_str().unwrap(), "--merge"]);
    assert!(
        out.contains("imported 2") && !out.contains("removed"),
        "{out}"
    );
    assert_eq!(
        env.json(&["mailboxes", "list"]).as_array().unwrap().len(),
        3
    );

    let out = env.ok(&["mailboxes", "import", p.to_str().unwrap()]);
    assert!(out.contains("removed 1"), "{out}");
    let ids: Vec<String> = env
        .json(&["mailboxes", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["identity"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [G3, G2], "sorted by name: Three, Two");
    let removed = env.json(&["audit", "list", "--operation", "MAILBOX_REMOVED"]);
    let removed = removed.as_array().unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["identity"], G1);
    assert_eq!(
        removed[0]["details"]["reason"],
        "absent from snapshot import"
    );
}
