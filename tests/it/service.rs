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

#[test]
fn completions_and_the_manual_page_come_from_the_command_line_definition() {
    let env = Env::new();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef imm-daemon"),
        ("fish", "complete -c imm-daemon"),
    ] {
        let text = env.ok(&["completions", shell]);
        assert!(text.contains(marker), "{shell}: {text}");
        for sub in ["mailboxes", "status", "service", "audit"] {
            assert!(text.contains(sub), "{shell} lacks {sub}");
        }
    }
    let err = env.fails(&["completions", "cmd.exe"], 2);
    assert!(err.contains("invalid value"), "{err}");
    let man = env.ok(&["man"]);
    assert!(man.contains(".TH imm-daemon 1"), "{man}");
    for sub in ["mailboxes", "status", "stop", "service"] {
        assert!(man.contains(sub), "the manual lacks {sub}");
    }
}

#[test]
fn the_debian_package_ships_the_binary_unit_manual_and_completions() {
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap(),
    )
    .unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    let pairs: Vec<(&str, &str)> = assets
        .iter()
        .map(|a| (a[0].as_str().unwrap(), a[1].as_str().unwrap()))
        .collect();
    for (source, dest) in [
        ("target/release/imm-daemon", "usr/bin/"),
        ("systemd/imm-daemon.service", "usr/lib/systemd/user/"),
        ("target/assets/imm-daemon.1.gz", "usr/share/man/man1/"),
    ] {
        assert!(
            pairs.contains(&(source, dest)),
            "{source} -> {dest}: {pairs:?}"
        );
    }
    // What is not built by packaging/build-assets.sh is in the repository (the unit, at
    // least, is such a file).
    let in_repository: Vec<&str> = pairs
        .iter()
        .map(|(source, _)| *source)
        .filter(|source| !source.starts_with("target/"))
        .collect();
    assert!(in_repository.contains(&"systemd/imm-daemon.service"));
    for source in in_repository {
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(source)
                .exists(),
            "{source}"
        );
    }
    // The build script writes every generated asset the package lists.
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/build-assets.sh"
    ))
    .unwrap();
    let generated: Vec<&str> = pairs
        .iter()
        .filter_map(|(source, _)| source.strip_prefix("target/assets/"))
        .collect();
    assert!(generated.contains(&"imm-daemon.1.gz"));
    for name in generated {
        let written = name.trim_end_matches(".gz");
        assert!(
            script.contains(written),
            "build-assets.sh does not write {name}"
        );
    }
}

/// `service install` and `uninstall` for real, on Linux, against a stand-in `systemctl`
/// first on PATH that records its arguments (a test machine has no user service
/// manager to talk to) and fails when told to.
#[cfg(target_os = "linux")]
#[test]
fn install_writes_the_unit_and_asks_systemd_and_uninstall_reverses_it() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = home.path().join("calls.txt");
    let shim = bin.join("systemctl");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nif [ -e '{}' ]; then echo 'Failed to connect to bus' >&2; exit 1; fi\n",
            calls.display(),
            home.path().join("fail").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let service = |args: &[&str]| {
        let mut c = env.cmd();
        c.arg("service")
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("PATH", &path);
        c.output().unwrap()
    };
    let unit = home.path().join(".config/systemd/user/imm-daemon.service");

    let out = service(&["install"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&unit).expect("the unit is written");
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_imm-daemon")).unwrap();
    assert!(
        text.contains(&format!("ExecStart={} run", exe.display())),
        "this binary, by its absolute path: {text}"
    );
    assert!(
        text.contains(&format!("IMM_HOME={}", env.home.path().display())),
        "IMM_HOME is carried into the service: {text}"
    );
    assert_eq!(crate::support::mode(&unit), 0o600);
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "--user daemon-reload\n--user enable --now imm-daemon.service\n"
    );

    // The service manager refusing is an error that says what it said.
    std::fs::write(home.path().join("fail"), "").unwrap();
    let out = service(&["install"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("systemctl --user daemon-reload") && err.contains("Failed to connect to bus"),
        "{err}"
    );
    std::fs::remove_file(home.path().join("fail")).unwrap();

    std::fs::write(&calls, "").unwrap();
    let out = service(&["uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!unit.exists(), "the unit is removed");
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "--user disable --now imm-daemon.service\n--user daemon-reload\n"
    );
    let out = service(&["uninstall"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not installed"));
}
