//! The query commands' output shapes and filters, through the real binary.

use serde_json::{Value, json};

use crate::support::{Env, G1, G2, G3, ORIGINAL_COLUMNS, days_ago_ms, mode, record};

/// Ann, as `seeded` imports her.
fn ann() -> Value {
    let mut ann = record(G1, "Ann Archer", "ann@contoso.com", days_ago_ms(400));
    ann["LitigationHoldEnabled"] = json!(true);
    ann["LicenseType"] = json!("E5");
    ann["CustomAttribute1"] = json!("Contoso");
    ann["TotalItemSize"] = json!("2 MB (2,097,152 bytes)");
    ann["ItemCount"] = json!(20);
    ann
}

/// Three mailboxes: Ann (litigation, E5, Contoso, 400 days), Ben (eDiscovery, E3, 10 days,
/// auto-expanding archive), Cat (no hold, unpriced license, Fabrikam by domain, 800 days).
fn seeded() -> Env {
    let env = Env::new();
    std::fs::create_dir_all(env.config_file().parent().unwrap()).unwrap();
    std::fs::write(
        env.config_file(),
        "[inventory]\ncompany_attribute = \"CustomAttribute1\"\n\
         prices = { E3 = 36.0, E5 = 57.0 }\ncompany_domains = { \"fabrikam.com\" = \"Fabrikam\" }\n",
    )
    .unwrap();
    let ann = ann();
    let mut ben = record(G2, "Ben Baker", "ben@contoso.com", days_ago_ms(10));
    ben["InPlaceHolds"] = json!(["UniH0123"]);
    ben["LicenseType"] = json!("E3");
    ben["CustomAttribute1"] = json!("Contoso");
    ben["AutoExpandingArchiveEnabled"] = json!(true);
    let mut cat = record(G3, "Cat Carver", "cat@fabrikam.com", days_ago_ms(800));
    cat["LicenseType"] = json!("Kiosk");
    env.import(&[ann, ben, cat]);
    env
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["display_name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn list_json_shape() {
    let env = seeded();
    let v = env.json(&["mailboxes", "list"]);
    assert_eq!(names(&v), ["Ann Archer", "Ben Baker", "Cat Carver"]);
    let ann = &v[0];
    for key in ORIGINAL_COLUMNS {
        assert!(ann.get(key).is_some(), "missing {key} in {ann}");
    }
    assert_eq!(ann["age_days"], 400, "age is computed fresh");
    assert_eq!(ann["monthly_cost"], 57.0);
    assert_eq!(ann["size_mb"], 2.0);
    assert_eq!(ann["operating_company"], "Contoso");
    assert_eq!(ann["recovery_eligible"], true);
    let ben = &v[1];
    assert_eq!(ben["recovery_eligible"], false);
    let codes: Vec<&str> = ben["recovery_blockers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["auto_expanding_archive", "soft_deleted_under_30_days"]
    );
    assert!(
        ben["recovery_blockers"][0]["message"]
            .as_str()
            .unwrap()
            .len()
            > 20
    );
    assert_eq!(v[2]["operating_company"], "Fabrikam", "from the domain map");
    assert_eq!(v[2]["monthly_cost"], 0.0);
    // JSON is the default when stdout is not a terminal.
    let piped: Value = serde_json::from_str(&env.ok(&["mailboxes", "list"])).unwrap();
    assert_eq!(piped, v);
}

#[test]
fn filters_sort_and_limit() {
    let env = seeded();
    let q = |args: &[&str]| {
        let mut a = vec!["mailboxes", "list"];
        a.extend(args);
        names(&env.json(&a))
    };
    assert_eq!(q(&["--hold", "litigation"]), ["Ann Archer"]);
    assert_eq!(q(&["--hold", "EDISCOVERY"]), ["Ben Baker"]);
    assert_eq!(q(&["--company", "contoso"]), ["Ann Archer", "Ben Baker"]);
    assert_eq!(q(&["--older-than", "365"]), ["Ann Archer", "Cat Carver"]);
    assert_eq!(q(&["--eligible"]), ["Ann Archer", "Cat Carver"]);
    assert_eq!(
        q(&["--sort", "age", "--desc"]),
        ["Cat Carver", "Ann Archer", "Ben Baker"]
    );
    assert_eq!(
        q(&["--sort", "cost", "--desc", "--limit", "2"]),
        ["Ann Archer", "Ben Baker"]
    );
    assert_eq!(
        q(&["--sort", "size", "--desc", "--limit", "1"]),
        ["Ann Archer"]
    );
    let err = env.fails(&["mailboxes", "list", "--hold", "forever"], 2);
    assert!(err.contains("unknown hold type"), "{err}");
}

#[test]
fn search_is_case_insensitive_on_name_and_address() {
    let env = seeded();
    assert_eq!(
        names(&env.json(&["mailboxes", "search", "BAKER"])),
        ["Ben Baker"]
    );
    assert_eq!(
        names(&env.json(&["mailboxes", "search", "fabrikam"])),
        ["Cat Carver"]
    );
    assert_eq!(
        names(&env.json(&["mailboxes", "search", "contoso", "--hold", "litigation"])),
        ["Ann Archer"]
    );
    assert!(names(&env.json(&["mailboxes", "search", "nobody"])).is_empty());
}

#[test]
fn csv_and_table_shapes() {
    let env = seeded();
    let csv = env.ok(&["mailboxes", "list", "--format", "csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "identity,display_name,primary_smtp,user_principal_name,when_soft_deleted,age_days,size_mb,item_count,license_type,monthly_cost,hold_types,recovery_eligible,recovery_blockers,operating_company,department,last_updated"
    );
    let ann = lines.next().unwrap();
    assert!(
        ann.starts_with(&format!("{G1},Ann Archer,ann@contoso.com,")),
        "{ann}"
    );
    assert!(ann.contains(",57.00,litigation,true,,Contoso,"), "{ann}");
    assert_eq!(lines.count(), 2);

    let table = env
        .cmd()
        .env("COLUMNS", "200")
        .args(["mailboxes", "list", "--format", "table"])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("Name") && table.contains("Recoverable"),
        "{table}"
    );
    assert!(
        table.contains("Ann Archer") && table.contains("3 mailbox(es)"),
        "{table}"
    );
    // Narrow terminals drop the least important columns instead of wrapping.
    let narrow = env
        .cmd()
        .env("COLUMNS", "60")
        .args(["mailboxes", "list", "--format", "table"])
        .output()
        .unwrap();
    let narrow = String::from_utf8(narrow.stdout).unwrap();
    assert!(
        narrow.contains("Name") && !narrow.contains("Items"),
        "{narrow}"
    );
    assert!(narrow.lines().all(|l| l.chars().count() <= 60), "{narrow}");
    assert_eq!(
        narrow.lines().count(),
        2 + 3 + 1,
        "one line per row: {narrow}"
    );
}

#[test]
fn show_by_guid_address_or_upn() {
    let env = seeded();
    for key in [G1, &G1.to_uppercase(), "ANN@contoso.com"] {
        let m = env.json(&["mailboxes", "show", key]);
        assert_eq!(m["identity"], G1, "{key}");
    }
    let table = env.ok(&["mailboxes", "show", G2, "--format", "table"]);
    assert!(
        table.contains("Ben Baker") && table.contains("blocker: auto_expanding_archive"),
        "{table}"
    );
    let err = env.fails(&["mailboxes", "show", "ghost@contoso.com"], 1);
    assert!(
        err.contains("no cached inactive mailbox matches `ghost@contoso.com`"),
        "{err}"
    );
    let shown = env.json(&["audit", "list", "--operation", "get_mailbox_details"]);
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), 5, "three JSON shows, one table show, one miss");
    assert_eq!(shown[4]["result"], "failure");
}

#[test]
fn stats_by_company_hold_and_age() {
    let env = seeded();
    let s: Value = env.json(&["mailboxes", "stats"]);
    assert_eq!(s["count"], 3);
    assert_eq!(s["recovery_eligible"], 2);
    assert_eq!(s["monthly_cost"], 93.0);
    assert_eq!(
        s["by_company"][0],
        json!({"key": "Contoso", "count": 2, "monthly_cost": 93.0, "size_mb": 2.0})
    );
    let holds: Vec<(String, u64)> = s["by_hold_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().into(),
                g["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(holds.contains(&("litigation".into(), 1)) && holds.contains(&("none".into(), 1)));
    let bands: Vec<&str> = s["by_age_band"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(bands, ["0-29 days", "1-2 years", "2+ years"]);
    assert_eq!(s["unpriced_licenses"][0]["key"], "Kiosk");
    assert_eq!(s["cache"]["count"], 3);
    assert!(s["cache"]["file_size_bytes"].as_u64().unwrap() > 0);
    let table = env.ok(&["mailboxes", "stats", "--format", "table"]);
    assert!(
        table.contains("Unpriced license") && table.contains("Kiosk"),
        "{table}"
    );
    let csv = env.ok(&["mailboxes", "stats", "--format", "csv"]);
    assert!(
        csv.starts_with("group,key,count,monthly_cost,size_mb\ntotal,all,3,93.00,"),
        "{csv}"
    );
}

/// After a write, `stats` sums the tallies the write carried forward, with the write's
/// changes in them, and answers what a count of the table answers: after a merge import
/// that moves a mailbox to another company, puts it on hold and changes its size, and
/// after a snapshot import that removes one.
#[test]
fn stats_after_a_write_sum_the_tallies_it_carried() {
    let env = seeded();
    let stats = |env: &Env| {
        let mut v = env.json(&["mailboxes", "stats"]);
        let tallies = v["cache"]["tallies"].as_str().unwrap().to_string();
        // What differs between two answers on the same table.
        v["cache"].as_object_mut().unwrap().remove("tallies");
        v["cache"]
            .as_object_mut()
            .unwrap()
            .remove("file_size_bytes");
        (tallies, v)
    };
    // What a count gives: the tallies kept are set aside first, as a write they were
    // not told of does.
    let counted = |env: &Env| {
        env.open_db()
            .execute(
                "UPDATE mailbox_tally_state SET generation = generation + 1",
                [],
            )
            .unwrap();
        let (how, v) = stats(env);
        assert_eq!(how, "counted");
        v
    };
    // The import counted and kept the tallies in its own write.
    assert_eq!(stats(&env).0, "kept");
    let mut ben = record(G2, "Ben Baker", "ben@contoso.com", days_ago_ms(10));
    ben["InPlaceHolds"] = json!(["UniH0123"]);
    ben["LitigationHoldEnabled"] = json!(true);
    ben["LicenseType"] = json!("E3");
    ben["CustomAttribute1"] = json!("Fabrikam");
    ben["TotalItemSize"] = json!("5 MB (5,242,880 bytes)");
    let file = env.write("ben.json", serde_json::to_vec(&[&ben]).unwrap());
    env.ok(&["mailboxes", "import", "--merge", file.to_str().unwrap()]);
    let (how, carried) = stats(&env);
    assert_eq!(how, "kept", "the merge carried the tallies");
    assert_eq!(
        carried["by_company"],
        json!([
            {"key": "Contoso", "count": 1, "monthly_cost": 57.0, "size_mb": 2.0},
            {"key": "Fabrikam", "count": 2, "monthly_cost": 36.0, "size_mb": 5.0},
        ]),
        "{carried}"
    );
    assert_eq!(carried, counted(&env));
    // A snapshot without Cat (the count above kept its tallies).
    let ann = ann();
    let file = env.write("snapshot.json", serde_json::to_vec(&[&ann, &ben]).unwrap());
    env.ok(&[
        "mailboxes",
        "import",
        "--allow-removals",
        file.to_str().unwrap(),
    ]);
    let (how, carried) = stats(&env);
    assert_eq!(how, "kept", "the snapshot carried the tallies");
    assert_eq!(carried["count"], 2, "{carried}");
    assert_eq!(carried, counted(&env));
}

#[test]
fn export_writes_private_files_and_is_audited() {
    let env = seeded();
    let out_json = env.home.path().join("out/mailboxes.json");
    let msg = env.ok(&[
        "mailboxes",
        "export",
        "--format",
        "json",
        "--output",
        out_json.to_str().unwrap(),
    ]);
    assert!(msg.contains("exported 3 mailbox(es)"), "{msg}");
    let v: Value = serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    assert_eq!(names(&v), ["Ann Archer", "Ben Baker", "Cat Carver"]);
    assert_eq!(mode(&out_json), 0o600);

    let out_csv = env.home.path().join("mailboxes.csv");
    env.ok(&[
        "mailboxes",
        "export",
        "--format",
        "csv",
        "--output",
        out_csv.to_str().unwrap(),
        "--eligible",
    ]);
    let csv = std::fs::read_to_string(&out_csv).unwrap();
    assert_eq!(
        csv.lines().count(),
        3,
        "header and two eligible mailboxes: {csv}"
    );

    let audit = env.json(&["audit", "list", "--operation", "EXPORT_DATA"]);
    let audit = audit.as_array().unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0]["details"]["count"], 3);
    assert_eq!(audit[1]["details"]["format"], "csv");
    env.fails(
        &["mailboxes", "export", "--format", "table", "--output", "x"],
        2,
    );
}

#[test]
fn clear_needs_confirmation() {
    let env = seeded();
    env.fails(&["mailboxes", "clear"], 1);
    assert_eq!(
        env.json(&["mailboxes", "list"]).as_array().unwrap().len(),
        3
    );
    assert!(
        env.ok(&["mailboxes", "clear", "--yes"])
            .contains("removed 3")
    );
    assert!(
        env.json(&["mailboxes", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_log WHERE operation = 'CLEAR_CACHE'"),
        1
    );
}

#[test]
fn a_failed_export_is_audited_as_a_failure_and_leaves_no_file() {
    let env = seeded();
    let blocked = env.write("plain-file", "x").join("sub/out.json");
    let err = env.fails(
        &[
            "mailboxes",
            "export",
            "--format",
            "json",
            "--output",
            blocked.to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("plain-file"), "{err}");
    assert!(!blocked.exists());
    let rows = env.json(&["audit", "list", "--operation", "EXPORT_DATA"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["result"], "failure");
    assert!(
        rows[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("plain-file")
    );
}

#[test]
fn show_refuses_an_address_shared_by_several_mailboxes() {
    let env = Env::new();
    let mut a = record(G1, "Ann One", "ann@contoso.com", days_ago_ms(300));
    a["UserPrincipalName"] = json!("ann.one@contoso.onmicrosoft.com");
    let b = record(G2, "Ann Two", "ann@contoso.com", days_ago_ms(100));
    env.import(&[a, b]);
    let err = env.fails(&["mailboxes", "show", "ANN@contoso.com"], 1);
    assert!(err.contains("matches 2 inactive mailboxes"), "{err}");
    assert!(err.contains(G1) && err.contains(G2), "{err}");
    // The UPN, when it differs from the address, names one.
    let m = env.json(&["mailboxes", "show", "Ann.One@contoso.onmicrosoft.com"]);
    assert_eq!(m["identity"], G1);
}

#[test]
fn non_ascii_addresses_and_names_are_found_in_any_case() {
    let env = Env::new();
    env.import(&[record(G1, "ÅSA Öberg", "ÅSA@contoso.se", days_ago_ms(300))]);
    let m = env.json(&["mailboxes", "show", "åsa@CONTOSO.se"]);
    assert_eq!(m["primary_smtp"], "åsa@contoso.se");
    assert_eq!(
        names(&env.json(&["mailboxes", "search", "Åsa@"])),
        ["ÅSA Öberg"]
    );
    assert_eq!(
        names(&env.json(&["mailboxes", "search", "öBERG"])),
        ["ÅSA Öberg"]
    );
}
