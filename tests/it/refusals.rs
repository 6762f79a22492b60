//! Input that must be refused, and how: numbers beyond what the cache stores, CSV exports
//! cut short or with a column twice, mails Graph would not take or that would carry the
//! program's own secrets, oversized configuration values, MSAL caches of another
//! provider. Each refusal names what is wrong and where; nothing is half-applied.

use serde_json::json;

use crate::support::{Env, G1, G2, days_ago_ms, record};

/// The inventory as the JSON output shows it.
fn listed(env: &Env) -> Vec<serde_json::Value> {
    env.json(&["mailboxes", "list"]).as_array().unwrap().clone()
}

#[test]
fn counts_and_sizes_beyond_the_cache_are_refused_naming_record_and_field() {
    let env = Env::new();
    env.import(&[record(G1, "Ann", "ann@contoso.com", days_ago_ms(40))]);
    let cases = [
        ("ItemCount", json!(18446744073709551615u64)),
        ("ItemCount", json!("9,223,372,036,854,775,808")),
        ("TotalItemSize", json!(1e300)),
        ("TotalItemSize", json!(9223372036854775808u64)),
        (
            "TotalItemSize",
            json!("16 EB (18,446,744,073,709,551,615 bytes)"),
        ),
        (
            "TotalItemSize",
            json!("99 EB (99,999,999,999,999,999,999 bytes)"),
        ),
    ];
    for (field, value) in cases {
        let good = record(G1, "Ann", "ann@contoso.com", days_ago_ms(40));
        let mut bad = record(G2, "Ben", "ben@contoso.com", days_ago_ms(40));
        bad[field] = value.clone();
        let p = env.write("big.json", serde_json::to_vec(&[good, bad]).unwrap());
        let err = env.fails(&["mailboxes", "import", p.to_str().unwrap()], 65);
        assert!(
            err.contains("record 2") && err.contains(&format!("field {field}")),
            "{value}: {err}"
        );
        assert!(err.contains("9223372036854775807"), "{value}: {err}");
    }
    // The same in a CSV export, whose line is named too.
    let csv = format!(
        "\"ExchangeGuid\",\"ItemCount\",\"TotalItemSize\"\r\n\"{G1}\",\"1\",\"1 KB (1,024 bytes)\"\r\n\"{G2}\",\"18446744073709551615\",\"\"\r\n"
    );
    let p = env.write("big.csv", csv);
    let err = env.fails(&["mailboxes", "import", p.to_str().unwrap()], 65);
    assert!(err.contains("record 2"), "{err}");
    assert_eq!(err.matches("field ItemCount").count(), 1, "{err}");
    // Nothing of the refused exports was applied.
    let all = listed(&env);
    assert_eq!(all.len(), 1, "{all:?}");
    // The largest stored number is still taken.
    let mut max = record(G2, "Ben", "ben@contoso.com", days_ago_ms(40));
    max["ItemCount"] = json!(i64::MAX);
    max["TotalItemSize"] = json!(format!("8 EB ({} bytes)", i64::MAX));
    env.import(&[max]);
    let ben = env.json(&["mailboxes", "show", G2]);
    assert_eq!(ben["item_count"], json!(i64::MAX));
    assert_eq!(ben["size_bytes"], json!(i64::MAX));
}

/// The identities in the inventory.
fn identities(env: &Env) -> Vec<String> {
    listed(env)
        .iter()
        .map(|m| m["identity"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_csv_cut_inside_a_quoted_cell_is_refused_naming_line_and_column() {
    let env = Env::new();
    env.import(&[record(G1, "Ann", "ann@contoso.com", days_ago_ms(40))]);
    let head = "#TYPE Deserialized.Microsoft.Exchange.Data.Directory.Management.Mailbox\r\n\
                \"ExchangeGuid\",\"DisplayName\",\"InPlaceHolds\"\r\n";
    let g3 = crate::support::G3;
    for (tail, line, column) in [
        // Cut in the last cell: the record has all its cells, the last one short.
        (
            format!("\"{G2}\",\"Ben\",\"UniHabc\"\r\n\"{g3}\",\"Cem\",\"UniHa"),
            4,
            "column 3 (InPlaceHolds)",
        ),
        // Cut in a cell that had run over a line break: named where the cell starts.
        (
            format!("\"{G2}\",\"Ben\",\"UniHabc\"\r\n\"{g3}\",\"Cem\",\"UniHa\r\nmbx"),
            4,
            "column 3 (InPlaceHolds)",
        ),
        // Cut in a middle cell: fewer cells than columns, and the cut is the reason.
        (
            format!("\"{G2}\",\"Ben\",\"UniHabc\"\r\n\"{g3}\",\"Ce"),
            4,
            "column 2 (DisplayName)",
        ),
    ] {
        let p = env.write("cut.csv", format!("{head}{tail}"));
        let err = env.fails(&["mailboxes", "import", p.to_str().unwrap()], 65);
        assert!(
            err.contains(&format!("line {line}")) && err.contains(column),
            "{tail:?}: {err}"
        );
        assert!(err.contains("quoted"), "{err}");
    }
    // A quote closed at the very end, and a doubled quote inside a cell, are fine.
    let p = env.write(
        "whole.csv",
        format!("{head}\"{G2}\",\"Ben \"\"B\"\"\",\"UniHabc\""),
    );
    env.ok(&["mailboxes", "import", p.to_str().unwrap()]);
    assert_eq!(
        env.json(&["mailboxes", "show", G2])["display_name"],
        "Ben \"B\""
    );
}

#[test]
fn a_column_named_twice_is_refused_naming_line_and_both_columns() {
    let env = Env::new();
    env.import(&[
        record(G1, "Ann", "ann@contoso.com", days_ago_ms(40)),
        record(G2, "Ben", "ben@contoso.com", days_ago_ms(40)),
    ]);
    let before = identities(&env);
    let g3 = crate::support::G3;
    for (text, line, columns) in [
        // The second ExchangeGuid column used to win, replacing every mailbox.
        (
            format!(
                "\"ExchangeGuid\",\"DisplayName\",\"ExchangeGuid\"\r\n\"{G1}\",\"Ann\",\"{g3}\"\r\n"
            ),
            1,
            "columns 1 and 3",
        ),
        // Compared as the importer matches names: without case, around spaces.
        (
            format!("#TYPE Mailbox\r\nExchangeGuid,DisplayName, displayname \r\n{G1},Ann,Anne\r\n"),
            2,
            "columns 2 and 3",
        ),
        // Columns the importer does not read count too.
        (
            format!("ExchangeGuid,Notes,NOTES\r\n{G1},a,b\r\n"),
            1,
            "columns 2 and 3",
        ),
    ] {
        let p = env.write("twice.csv", &text);
        let err = env.fails(&["mailboxes", "import", p.to_str().unwrap()], 65);
        assert!(
            err.contains(&format!("line {line}")) && err.contains(columns),
            "{text:?}: {err}"
        );
    }
    // The same in JSON: a record with one property twice, named where it repeats.
    let text = format!("[\n {{\"ExchangeGuid\": \"{G1}\",\n  \"exchangeGuid\": \"{g3}\"}}\n]");
    let p = env.write("twice.json", text);
    let err = env.fails(&["mailboxes", "import", p.to_str().unwrap()], 65);
    assert!(
        err.contains("ExchangeGuid") && err.contains("twice") && err.contains("line 3"),
        "{err}"
    );
    assert_eq!(identities(&env), before, "nothing was replaced");
}

#[test]
fn csv_errors_name_the_right_line_with_windows_line_ends() {
    let env = Env::new();
    for end in ["\r\n", "\n"] {
        let text = [
            "#TYPE Mailbox".to_string(),
            "\"ExchangeGuid\",\"WhenSoftDeleted\"".to_string(),
            format!("\"{G1}\",\"2023-01-01\""),
            format!("\"{G2}\",\"someday\""),
        ]
        .join(end);
        let p = env.write("lines.csv", text);
        let err = env.fails(&["mailboxes", "import", p.to_str().unwrap()], 65);
        assert!(err.contains("record 2 (line 4)"), "{end:?}: {err}");
        let text = [
            "\"ExchangeGuid\",\"WhenSoftDeleted\"".to_string(),
            format!("\"{G1}\",\"2023-01-01\""),
            format!("\"{G2}\",\"2023-01-01\",\"extra\""),
        ]
        .join(end);
        let p = env.write("lines.csv", text);
        let err = env.fails(&["mailboxes", "import", p.to_str().unwrap()], 65);
        assert!(err.contains("line 3"), "{end:?}: {err}");
    }
}
