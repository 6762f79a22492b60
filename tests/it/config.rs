//! `config init | check | paths` and configuration errors, through the real binary.

use crate::support::{Env, mode};

#[test]
fn init_writes_a_private_sample_and_never_overwrites() {
    let env = Env::new();
    let out = env.ok(&["config", "init"]);
    assert!(out.contains("config.toml"), "{out}");
    let cfg = env.config_file();
    assert_eq!(mode(&cfg), 0o600);
    assert_eq!(mode(cfg.parent().unwrap()), 0o700);
    std::fs::write(&cfg, "cloud = \"usgov\"\n").unwrap();
    let err = env.fails(&["config", "init"], 1);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "cloud = \"usgov\"\n"
    );
    env.ok(&["config", "init", "--force"]);
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("[inventory]")
    );
    // The sample is itself a valid configuration.
    let out = env.ok(&["config", "check"]);
    assert!(out.contains("is valid"), "{out}");
}

#[test]
fn check_prints_the_effective_configuration() {
    let env = Env::new();
    std::fs::create_dir_all(env.config_file().parent().unwrap()).unwrap();
    std::fs::write(
        env.config_file(),
        "tenant = \"Contoso.com\"\nclient_id = \"0D2A1F5E-1234-4ABC-9DEF-0123456789AB\"\ncloud = \"china\"\n\
         exchange_url = \"http://127.0.0.1:8443\"\n[inventory.prices]\nE3 = 36\n",
    )
    .unwrap();
    let out = env.ok(&["config", "check"]);
    assert!(out.contains("tenant = \"contoso.com\""), "{out}");
    assert!(
        out.contains("0d2a1f5e-1234-4abc-9def-0123456789ab"),
        "{out}"
    );
    assert!(
        out.contains("authority = https://login.chinacloudapi.cn/contoso.com"),
        "{out}"
    );
    assert!(
        out.contains("graph_url = https://microsoftgraph.chinacloudapi.cn"),
        "{out}"
    );
    assert!(
        out.contains("exchange_url = http://127.0.0.1:8443"),
        "{out}"
    );
    assert!(out.contains("E3 = 36.0"), "{out}");
}

#[test]
fn bad_configuration_names_file_line_and_expectation() {
    let env = Env::new();
    for (text, line, needle) in [
        (
            "cloud = \"global\"\ntennant = \"contoso.com\"\n",
            "line 2",
            "unknown field `tennant`",
        ),
        ("cloud = \"mars\"\n", "line 1", "unknown variant `mars`"),
        (
            "[inventory]\nprices = { E3 = \"cheap\" }\n",
            "line 2",
            "invalid type",
        ),
        (
            "graph_url = \"http://graph.example.com\"\n",
            "line 1",
            "only https",
        ),
        ("tenant = 42\n", "line 1", "expected a string"),
    ] {
        let p = env.write("bad.toml", text);
        let err = env.fails(&["--config", p.to_str().unwrap(), "config", "check"], 78);
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains(line), "{text}: {err}");
        assert!(err.contains(needle), "{text}: {err}");
        // Every command refuses a broken configuration the same way.
        env.fails(&["--config", p.to_str().unwrap(), "mailboxes", "list"], 78);
    }
}

#[test]
fn missing_configuration() {
    let env = Env::new();
    let err = env.fails(&["config", "check"], 78);
    assert!(
        err.contains("does not exist") && err.contains("config init"),
        "{err}"
    );
    // The default location may be absent for inventory commands; a named file may not.
    env.ok(&["mailboxes", "list", "--format", "json"]);
    let err = env.fails(
        &["--config", "/nonexistent/imm.toml", "mailboxes", "list"],
        78,
    );
    assert!(err.contains("/nonexistent/imm.toml"), "{err}");
}

#[test]
fn config_location_overrides() {
    let env = Env::new();
    let a = env.write("a.toml", "cloud = \"usgov\"\n");
    let b = env.write("b.toml", "cloud = \"china\"\n");
    let out = env
        .cmd()
        .env("IMM_CONFIG", &a)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("usgov"));
    let out = env
        .cmd()
        .env("IMM_CONFIG", &a)
        .args(["--config", b.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("china"),
        "the flag wins"
    );
}

#[test]
fn paths_are_all_under_imm_home() {
    let env = Env::new();
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["config", "paths", "--json"])).unwrap();
    let home = env.home.path().to_str().unwrap();
    for key in [
        "config_file",
        "config_dir",
        "data_dir",
        "state_dir",
        "runtime_dir",
        "database",
        "lock_file",
        "socket",
        "state_file",
    ] {
        assert!(v[key].as_str().unwrap().starts_with(home), "{key}: {v}");
    }
    assert_eq!(v["config_source"], "default");
    let text = env.ok(&["config", "paths"]);
    assert!(text.contains("database") && text.contains(home), "{text}");
}
