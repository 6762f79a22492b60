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

fn utf16(s: &str, little_endian: bool) -> Vec<u8> {
    let mut v = if little_endian {
        vec![0xFF, 0xFE]
    } else {
        vec![0xFE, 0xFF]
    };
    for u in s.encode_utf16() {
        v.extend(if little_endian {
            u.to_le_bytes()
        } else {
            u.to_be_bytes()
        });
    }
    v
}

/// The queued mails, oldest first, as `queue list` shows them.
fn queued(env: &Env) -> Vec<serde_json::Value> {
    env.json(&["queue", "list"]).as_array().unwrap().clone()
}

#[test]
fn send_reads_batches_and_bodies_in_powershell_s_encodings() {
    let env = Env::new();
    let line = |i: usize| format!("{{\"to\": \"zoe@contoso.com\", \"subject\": \"Zoë {i}\"}}\r\n");
    let files = [
        (
            "bom.jsonl",
            [&[0xEF, 0xBB, 0xBF][..], line(1).as_bytes()].concat(),
        ),
        ("le.jsonl", utf16(&line(2), true)),
        ("be.jsonl", utf16(&line(3), false)),
    ];
    for (name, bytes) in files {
        let p = env.write(name, bytes);
        env.ok(&["send", "--batch", p.to_str().unwrap()]);
    }
    let out = env
        .cmd()
        .args(["send", "--batch", "-"])
        .write_stdin(utf16(&line(4), true))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let subjects: Vec<_> = queued(&env)
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects, ["Zoë 1", "Zoë 2", "Zoë 3", "Zoë 4"]);
    // A body file from Out-File (UTF-16 LE with a byte order mark), alone and in a batch.
    let body = env.write("body.txt", utf16("Grüße\r\n", true));
    env.ok(&[
        "send",
        "--to",
        "zoe@contoso.com",
        "--subject",
        "body",
        "--body-file",
        body.to_str().unwrap(),
    ]);
    let p = env.write(
        "body.jsonl",
        "{\"to\": \"zoe@contoso.com\", \"subject\": \"batch body\", \"body_file\": \"body.txt\"}\n",
    );
    env.ok(&["send", "--batch", p.to_str().unwrap()]);
    for id in ["5", "6"] {
        let shown: serde_json::Value =
            serde_json::from_str(&env.ok(&["queue", "show", id, "--json"])).unwrap();
        assert_eq!(shown["body"], "Grüße\r\n", "{shown}");
    }
}

/// `send` with a time limit: a refusal must come at once, not after a read that blocks.
fn send_fails(env: &Env, args: &[&str], code: i32) -> String {
    let out = env
        .cmd()
        .arg("send")
        .args(args)
        .timeout(std::time::Duration::from_secs(20))
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    let short: Vec<String> = args.iter().map(|a| a.chars().take(80).collect()).collect();
    assert_eq!(out.status.code(), Some(code), "{short:?}: {err}");
    err
}

#[test]
#[allow(unsafe_code)]
fn send_refuses_a_fifo_a_device_or_a_folder_as_attachment_or_body() {
    let env = Env::new();
    let fifo = env.home.path().join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo = fifo.to_str().unwrap();
    let folder = env.home.path().to_str().unwrap();
    for (option, path) in [
        ("--attach", fifo),
        ("--body-file", fifo),
        ("--attach", "/dev/zero"),
        ("--body-file", "/dev/null"),
        ("--attach", folder),
    ] {
        let err = send_fails(
            &env,
            &["--to", "ada@contoso.com", "--subject", "s", option, path],
            66,
        );
        assert!(
            err.contains(path) && err.contains("not a regular file"),
            "{option} {path}: {err}"
        );
    }
    let p = env.write(
        "fifo.jsonl",
        format!("{{\"to\": \"ada@contoso.com\", \"subject\": \"s\", \"attach\": \"{fifo}\"}}\n"),
    );
    let err = send_fails(&env, &["--batch", p.to_str().unwrap()], 66);
    assert!(
        err.contains("line 1") && err.contains("not a regular file"),
        "{err}"
    );
    assert!(queued(&env).is_empty());
}

#[test]
fn a_batch_with_one_key_twice_is_refused_naming_both_lines() {
    let env = Env::new();
    let p = env.write(
        "keys.jsonl",
        "{\"to\": \"a@contoso.com\", \"subject\": \"one\", \"key\": \"k1\"}\n\
         {\"to\": \"b@contoso.com\", \"subject\": \"two\", \"key\": \"k2\"}\n\
         \n\
         {\"to\": \"c@contoso.com\", \"subject\": \"three\", \"key\": \"k1\"}\n",
    );
    let err = send_fails(&env, &["--batch", p.to_str().unwrap()], 65);
    assert!(
        err.contains("lines 1 and 4") && err.contains("`k1`"),
        "{err}"
    );
    assert!(queued(&env).is_empty());
    // A key already queued by an earlier send is the idempotency the key is for.
    env.ok(&[
        "send",
        "--to",
        "a@contoso.com",
        "--subject",
        "one",
        "--key",
        "k1",
    ]);
    let p = env.write(
        "again.jsonl",
        "{\"to\": \"a@contoso.com\", \"subject\": \"one\", \"key\": \"k1\"}\n",
    );
    env.ok(&["send", "--batch", p.to_str().unwrap()]);
    assert_eq!(queued(&env).len(), 1);
}

#[test]
fn send_refuses_a_mail_graph_would_not_take() {
    let env = Env::new();
    // Under Graph's 3 MB of attachments, but base64 and the body take the request past
    // its 4 MB: counted from what would be sent, JSON escapes included.
    let attachment = env.write("report.bin", vec![7u8; 3_140_000]);
    let attachment = attachment.to_str().unwrap();
    let plain = "a".repeat(5_000);
    let quotes = "\"".repeat(5_000);
    env.ok(&[
        "send",
        "--to",
        "ada@contoso.com",
        "--subject",
        "fits",
        "--body",
        &plain,
        "--attach",
        attachment,
    ]);
    let err = send_fails(
        &env,
        &[
            "--to",
            "ada@contoso.com",
            "--subject",
            "too big",
            "--body",
            &quotes,
            "--attach",
            attachment,
        ],
        65,
    );
    assert!(err.contains("4194304"), "{err}");
    // The same in a batch, naming the line.
    let p = env.write(
        "big.jsonl",
        format!(
            "{{\"to\": \"a@contoso.com\", \"subject\": \"ok\"}}\n{}\n",
            json!({"to": "b@contoso.com", "subject": "big", "body": quotes, "attach": attachment})
        ),
    );
    let err = send_fails(&env, &["--batch", p.to_str().unwrap()], 65);
    assert!(err.contains("line 2") && err.contains("4194304"), "{err}");
    // A subject of 255 characters is taken, one of 256 is not.
    let subject = "é".repeat(255);
    env.ok(&["send", "--to", "ada@contoso.com", "--subject", &subject]);
    let long = format!("{subject}x");
    let err = send_fails(&env, &["--to", "ada@contoso.com", "--subject", &long], 65);
    assert!(err.contains("256") && err.contains("255"), "{err}");
    assert!(
        !err.contains(&long),
        "the subject is not echoed whole: {err}"
    );
    assert_eq!(queued(&env).len(), 2);
}

#[test]
fn send_never_attaches_the_token_file_or_its_key() {
    let env = Env::new();
    let home = env.home.path();
    let key_file = home.join("elsewhere.key");
    crate::daemon::config(
        &env,
        &format!("[auth]\nkey_file = \"{}\"\n", key_file.display()),
    );
    std::fs::create_dir_all(home.join("data")).unwrap();
    let token_file = env.write("data/tokens.enc", b"IMMTOK\x01\x04 encrypted");
    let generated = env.write("config/token.key", [1u8; 32]);
    std::fs::write(&key_file, [2u8; 32]).unwrap();
    let set_aside = env.write("data/tokens.enc.unreadable-20250101T000000Z", b"IMMTOK");
    let credentials = home.join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("imm-token-key"), [3u8; 32]).unwrap();
    std::os::unix::fs::symlink(&token_file, home.join("innocent.pdf")).unwrap();
    std::fs::hard_link(&generated, home.join("copy.bin")).unwrap();
    let dotted = home.join("config/../data/tokens.enc");
    let named = [
        token_file.clone(),
        generated.clone(),
        key_file.clone(),
        set_aside,
        credentials.join("imm-token-key"),
        home.join("innocent.pdf"),
        home.join("copy.bin"),
        dotted,
    ];
    for path in &named {
        let path = path.to_str().unwrap();
        for option in ["--attach", "--body-file"] {
            let out = env
                .cmd()
                .env("CREDENTIALS_DIRECTORY", &credentials)
                .args([
                    "send",
                    "--to",
                    "ada@contoso.com",
                    "--subject",
                    "s",
                    option,
                    path,
                ])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(65), "{option} {path}: {err}");
            assert!(err.contains(path) && err.contains("secret"), "{err}");
        }
    }
    let p = env.write(
        "leak.jsonl",
        "{\"to\": \"a@contoso.com\", \"subject\": \"s\", \"attach\": \"innocent.pdf\"}\n",
    );
    let err = send_fails(&env, &["--batch", p.to_str().unwrap()], 65);
    assert!(err.contains("line 1") && err.contains("secret"), "{err}");
    assert!(queued(&env).is_empty());
    // Other files in the same folders are fine.
    let ok = env.write("data/report.csv", "a,b\n");
    env.ok(&[
        "send",
        "--to",
        "ada@contoso.com",
        "--subject",
        "s",
        "--attach",
        ok.to_str().unwrap(),
    ]);
}

#[test]
fn a_huge_configuration_value_is_quoted_short_with_its_key_and_line() {
    let env = Env::new();
    let huge = "a".repeat(1_600_000);
    let digits = "1".repeat(1_600_000);
    let cases = [
        (format!("client_id = \"{huge}\"\n"), "line 1", "`client_id`"),
        (
            format!("[mail]\nfrom = \"{huge}\"\n"),
            "line 2",
            "`mail.from`",
        ),
        (
            format!("[heartbeat]\ninterval = \"{huge}\"\n"),
            "line 2",
            "`heartbeat.interval`",
        ),
        (
            format!("[inventory]\nprices = {{ E3 = \"{huge}\" }}\n"),
            "line 2",
            "`inventory.prices.E3`",
        ),
        (format!("client_id = {digits}\n"), "line 1", "client_id"),
        // A name that would be valid but for its length: it is stored with every mailbox,
        // and `config check` would print it back whole.
        (
            format!("[inventory]\ndefault_license = \"{huge}\"\n"),
            "line 2",
            "`inventory.default_license`",
        ),
        // (A name in a table is checked with the whole table, placed at its header.)
        (
            format!("[inventory.company_domains]\n\"contoso.com\" = \"{huge}\"\n"),
            "line 1",
            "`inventory.company_domains`",
        ),
        (
            format!("unknown_{huge} = 1\n"),
            "line 1",
            "unknown field `unknown_aaa",
        ),
        (
            format!("[mail]\nfrom = \"{huge}\n"),
            "line 2",
            "from = \"aaa",
        ),
    ];
    for (text, line, key) in cases {
        let p = env.write("huge.toml", &text);
        for args in [
            &["--config", p.to_str().unwrap(), "config", "check"][..],
            &["--config", p.to_str().unwrap(), "mailboxes", "list"][..],
        ] {
            let out = env.cmd().args(args).output().unwrap();
            assert_eq!(out.status.code(), Some(78));
            let err = String::from_utf8_lossy(&out.stderr);
            let size = out.stdout.len() + out.stderr.len();
            assert!(size < 2048, "{size} bytes for {}: {err:.3000}", &text[..40]);
            assert!(
                err.contains("huge.toml") && err.contains(line) && err.contains(key),
                "{}: {err}",
                &text[..40]
            );
        }
    }
    // What is short is still quoted whole.
    let p = env.write("short.toml", "[mail]\nfrom = \"not-an-address\"\n");
    let err = env.fails(&["--config", p.to_str().unwrap(), "config", "check"], 78);
    assert!(
        err.contains("`not-an-address`") && err.contains("`mail.from`") && err.contains("line 2"),
        "{err}"
    );
}

/// A refresh token and an id token the emulated provider issued, as a Python MSAL
/// prototype signed in against it would hold them.
fn msal_tokens(p: &imm_emulators::identity::IdentityProvider) -> (String, String) {
    use imm_daemon::auth;
    use imm_emulators::identity::TEST_CLIENT_ID;
    use secrecy::ExposeSecret;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = imm_daemon::http::client(&Default::default()).unwrap();
        let url = format!("{}/v2.0/.well-known/openid-configuration", p.authority());
        let ep = auth::discover(&http, &url).await.unwrap();
        let code = auth::device::request_code(
            &http,
            &ep,
            TEST_CLIENT_ID,
            "openid offline_access https://graph.microsoft.com/User.Read",
        )
        .await
        .unwrap();
        assert!(p.approve(&code.user_code));
        let t = auth::device::poll_for_tokens(
            &http,
            &ep,
            TEST_CLIENT_ID,
            &code,
            std::time::Duration::from_secs(30),
            &Default::default(),
        )
        .await
        .unwrap();
        (
            t.refresh_token.unwrap().expose_secret().to_string(),
            t.id_token.unwrap().expose_secret().to_string(),
        )
    })
}

/// An MSAL cache of one account of `client` at `environment` and `realm`, with an id
/// token and an account entry whose username is `username`.
fn msal_account(
    home: &str,
    environment: &str,
    realm: &str,
    client: &str,
    refresh_token: &str,
    id_token: &str,
    username: &str,
) -> serde_json::Value {
    json!({
        "RefreshToken": {
            format!("{home}-{environment}-refreshtoken-{client}--"): {
                "credential_type": "RefreshToken", "secret": refresh_token,
                "home_account_id": home, "environment": environment, "client_id": client,
                "target": "openid offline_access https://graph.microsoft.com/User.Read",
                "last_modification_time": "1763700000"
            }
        },
        "IdToken": {
            format!("{home}-{environment}-idtoken-{client}-{realm}-"): {
                "credential_type": "IdToken", "secret": id_token, "home_account_id": home,
                "environment": environment, "realm": realm, "client_id": client
            }
        },
        "Account": {
            format!("{home}-{environment}-{realm}"): {
                "home_account_id": home, "environment": environment, "realm": realm,
                "local_account_id": "oid", "username": username, "authority_type": "MSSTS"
            }
        }
    })
}

/// Two caches in one, as MSAL keeps several accounts.
fn merged(a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    let mut out = a;
    for (kind, entries) in b.as_object().unwrap() {
        let slot = out[kind.as_str()].as_object_mut().unwrap();
        for (k, v) in entries.as_object().unwrap() {
            slot.insert(k.clone(), v.clone());
        }
    }
    out
}

fn msal_env(p: &imm_emulators::identity::IdentityProvider) -> Env {
    let env = Env::new();
    crate::daemon::config(
        &env,
        &format!(
            "client_id = \"{}\"\nauthority = \"{}\"\n[auth]\ntoken_store = \"file\"\n",
            imm_emulators::identity::TEST_CLIENT_ID,
            p.authority()
        ),
    );
    env
}

#[test]
fn an_msal_cache_of_another_provider_or_tenant_is_refused_naming_both() {
    use imm_emulators::identity::{TEST_CLIENT_ID, TestUser};
    let p = crate::signin::provider(crate::signin::fast());
    let (rt, idt) = msal_tokens(&p);
    let user = TestUser::default();
    let home = format!("{}.{}", user.uid, user.tid);
    let env = msal_env(&p);
    let other_tenant = "0c0ffee0-1111-4222-8333-444455556666";
    for (environment, realm, names) in [
        // A cache from Microsoft's cloud, imported where the configured authority is
        // another provider: its refresh token would go to the wrong party.
        (
            "login.microsoftonline.com",
            user.tid.as_str(),
            ["login.microsoftonline.com", "127.0.0.1"],
        ),
        // The right provider, another tenant.
        ("127.0.0.1", other_tenant, [other_tenant, user.tid.as_str()]),
    ] {
        let cache = msal_account(&home, environment, realm, TEST_CLIENT_ID, &rt, &idt, "");
        let file = env.write("msal.json", serde_json::to_vec(&cache).unwrap());
        let out = env
            .cmd()
            .args(["login", "--import-msal-cache", file.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{environment} {realm}: {err}");
        for name in names {
            assert!(err.contains(name), "{name}: {err}");
        }
        assert!(!err.contains(&rt) && !err.contains(&idt));
    }
    assert_eq!(p.stats().refresh_requests, 0, "no refresh token was sent");
    let s = crate::signin::status(&env);
    assert_ne!(s["signin"]["state"], "signed_in", "{s}");
}

#[test]
fn msal_import_takes_the_account_by_the_names_imm_daemon_shows() {
    use imm_emulators::identity::{TEST_CLIENT_ID, TestUser};
    let p = crate::signin::provider(crate::signin::fast());
    let (rt, idt) = msal_tokens(&p);
    let user = TestUser::default();
    let home = format!("{}.{}", user.uid, user.tid);
    // MSAL's `username` left empty, as some providers leave it; another account beside.
    let other = msal_account(
        "other.home",
        "127.0.0.1",
        &user.tid,
        TEST_CLIENT_ID,
        "other-refresh-token",
        "not-a-jwt",
        "someone@contoso.onmicrosoft.com",
    );
    let cache = merged(
        msal_account(&home, "127.0.0.1", &user.tid, TEST_CLIENT_ID, &rt, &idt, ""),
        other,
    );
    for name in [user.username.as_str(), home.as_str(), user.sub.as_str()] {
        let env = msal_env(&p);
        let file = env.write("msal.json", serde_json::to_vec(&cache).unwrap());
        let out = env.ok(&[
            "login",
            "--import-msal-cache",
            file.to_str().unwrap(),
            "--account",
            name,
        ]);
        assert!(
            out.contains(&format!("Signed in as {}", user.username)),
            "{name}: {out}"
        );
    }
    // Without --account the choice is refused, naming each account as imm-daemon shows it.
    let env = msal_env(&p);
    let file = env.write("msal.json", serde_json::to_vec(&cache).unwrap());
    let err = env.fails(&["login", "--import-msal-cache", file.to_str().unwrap()], 1);
    assert!(
        err.contains(&user.username) && err.contains("someone@contoso.onmicrosoft.com"),
        "{err}"
    );
    let err = env.fails(
        &[
            "login",
            "--import-msal-cache",
            file.to_str().unwrap(),
            "--account",
            "nobody",
        ],
        1,
    );
    assert!(
        err.contains("nobody") && err.contains(&user.username),
        "{err}"
    );
    // The refresh token imported is the one the provider issued, and it works.
    let env = msal_env(&p);
    let file = env.write("msal.json", serde_json::to_vec(&cache).unwrap());
    env.ok(&[
        "login",
        "--import-msal-cache",
        file.to_str().unwrap(),
        "--account",
        &user.username,
    ]);
    let token = env.ok(&["token", "--resource", "graph", "--show"]);
    assert!(p.access_token_info(token.trim()).is_some());
}
