//! The service files and `imm-daemon service`.

use crate::support::Env;

const PLIST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/launchd/dev.imm-daemon.agent.plist"
);

#[test]
fn the_launch_agent_is_a_property_list_with_the_keys_launchd_needs() {
    let v: plist::Value = plist::Value::from_file(PLIST).expect("a property list");
    let d = v.as_dictionary().unwrap();
    assert_eq!(d["Label"].as_string(), Some("dev.imm-daemon.agent"));
    let args: Vec<&str> = d["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap())
        .collect();
    assert!(
        args[0].ends_with("/imm-daemon") && args[1] == "run",
        "{args:?}"
    );
    assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
    let keep_alive = d["KeepAlive"].as_dictionary().unwrap();
    assert_eq!(
        keep_alive["SuccessfulExit"].as_boolean(),
        Some(false),
        "restart only after a failure"
    );
    assert!(d["ThrottleInterval"].as_unsigned_integer().unwrap() >= 10);
    assert_eq!(d["ProcessType"].as_string(), Some("Background"));
    for key in ["StandardOutPath", "StandardErrorPath"] {
        assert!(
            d[key]
                .as_string()
                .unwrap()
                .contains("/Library/Logs/imm-daemon/"),
            "{key}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn install_dry_run_shows_the_unit_for_this_binary_and_the_commands() {
    let env = Env::new();
    let home = env.home.path().join("user");
    std::fs::create_dir_all(&home).unwrap();
    let out = env
        .cmd()
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .args(["service", "install", "--dry-run"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let binary = std::fs::canonicalize(env!("CARGO_BIN_EXE_imm-daemon")).unwrap();
    let unit_path = home.join(".config/systemd/user/imm-daemon.service");
    assert!(
        text.contains(&format!("would write {}:", unit_path.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("ExecStart={} run\n", binary.display())),
        "{text}"
    );
    // The test's IMM_HOME goes with the service.
    assert!(
        text.contains(&format!(
            "Environment=IMM_HOME={}\n",
            env.home.path().canonicalize().unwrap().display()
        )) || text.contains(&format!(
            "Environment=IMM_HOME={}\n",
            env.home.path().display()
        )),
        "{text}"
    );
    assert!(
        text.contains("Type=notify") && text.contains("WatchdogSec="),
        "{text}"
    );
    assert!(
        text.contains("would run: systemctl --user daemon-reload\n"),
        "{text}"
    );
    assert!(
        text.contains("would run: systemctl --user enable --now imm-daemon.service\n"),
        "{text}"
    );
    assert!(!unit_path.exists(), "a dry run writes nothing");

    let text = String::from_utf8(
        env.cmd()
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .args(["service", "uninstall", "--dry-run"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains(&format!("would remove {}", unit_path.display())),
        "{text}"
    );
    assert!(
        text.contains("would run: systemctl --user disable --now imm-daemon.service"),
        "{text}"
    );
}
