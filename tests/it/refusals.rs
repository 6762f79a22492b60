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
