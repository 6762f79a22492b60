//! Service-manager files: the systemd user unit and the launchd agent, rendered for this
//! binary, and what `imm-daemon service install | uninstall` writes and runs.
//!
//! The files in the repository's `systemd/` and `launchd/` folders are these renderings
//! for a packaged binary (tests keep them equal), so there is one source for each.

use std::path::{Path, PathBuf};

/// The systemd unit as shipped (ExecStart names the packaged binary).
pub const SYSTEMD_UNIT: &str = include_str!("../systemd/imm-daemon.service");

/// The unit's file name.
pub const SYSTEMD_UNIT_NAME: &str = "imm-daemon.service";

/// The launchd label (and the agent file's name without `.plist`).
pub const LAUNCHD_LABEL: &str = "dev.imm-daemon.agent";

/// The binary path in the shipped unit.
const PACKAGED_BINARY: &str = "/usr/bin/imm-daemon";

/// How the service starts the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The binary, absolute.
    pub binary: PathBuf,
    /// `IMM_HOME` for the service, when the installing shell had one.
    pub imm_home: Option<PathBuf>,
    /// `--config` for the service, when one was given.
    pub config: Option<PathBuf>,
}

impl Launch {
    fn args(&self) -> Vec<String> {
        let mut a = vec![self.binary.display().to_string()];
        if let Some(c) = &self.config {
            a.push("--config".into());
            a.push(c.display().to_string());
        }
        a.push("run".into());
        a
    }
}

/// A word of a systemd command line or setting: `%` and `\` escaped, quoted when needed.
fn systemd_word(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    if escaped
        .chars()
        .any(|c| c.is_whitespace() || c == ';' || c == '\'')
    {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

/// The systemd user unit for `launch`.
pub fn systemd_unit(launch: &Launch) -> String {
    let exec = launch
        .args()
        .iter()
        .map(|a| systemd_word(a))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = String::with_capacity(SYSTEMD_UNIT.len() + 200);
    for line in SYSTEMD_UNIT.lines() {
        if line == format!("ExecStart={PACKAGED_BINARY} run") {
            out.push_str(&format!("ExecStart={exec}\n"));
            if let Some(home) = &launch.imm_home {
                out.push_str(&format!(
                    "Environment={}\n",
                    systemd_word(&format!("IMM_HOME={}", home.display()))
                ));
            }
            continue;
        }
        if let Some(paths) = line.strip_prefix("ReadWritePaths=") {
            let mut v = paths.to_string();
            for extra in [
                &launch.imm_home,
                &launch
                    .config
                    .as_ref()
                    .and_then(|c| c.parent().map(Path::to_path_buf)),
            ]
            .into_iter()
            .flatten()
            {
                v.push_str(&format!(" -{}", systemd_word(&extra.display().to_string())));
            }
            out.push_str(&format!("ReadWritePaths={v}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The launchd agent for `launch`, logging under `home`/Library/Logs/imm-daemon/.
pub fn launchd_plist(launch: &Launch, home: &Path) -> String {
    let log = home.join("Library/Logs/imm-daemon/imm-daemon.log");
    let args: String = launch
        .args()
        .iter()
        .map(|a| format!("\t\t<string>{}</string>\n", crate::text::escape_markup(a)))
        .collect();
    let env = match &launch.imm_home {
        Some(h) => format!(
            "\t<key>EnvironmentVariables</key>\n\t<dict>\n\t\t<key>IMM_HOME</key>\n\t\t<string>{}</string>\n\t</dict>\n",
            crate::text::escape_markup(&h.display().to_string())
        ),
        None => String::new(),
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- imm-daemon as a launchd agent. `imm-daemon service install` writes this file, with
     this binary's path and your home folder, to ~/Library/LaunchAgents/ and loads it. -->
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>{LAUNCHD_LABEL}</string>
	<key>ProgramArguments</key>
	<array>
{args}	</array>
{env}	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>ThrottleInterval</key>
	<integer>10</integer>
	<key>ProcessType</key>
	<string>Background</string>
	<key>ExitTimeOut</key>
	<integer>30</integer>
	<key>Umask</key>
	<integer>63</integer>
	<key>StandardOutPath</key>
	<string>{log}</string>
	<key>StandardErrorPath</key>
	<string>{log}</string>
</dict>
</plist>
"#,
        log = crate::text::escape_markup(&log.display().to_string())
    )
}

/// Which service manager this system has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    /// The manager of the platform this binary was built for.
    pub fn current() -> Option<Manager> {
        if cfg!(target_os = "macos") {
            Some(Manager::Launchd)
        } else if cfg!(target_os = "linux") {
            Some(Manager::Systemd)
        } else {
            None
        }
    }
}

/// What installing or uninstalling does: a file to write or remove, then commands.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub file: PathBuf,
    /// What is written (install), or `None` (uninstall removes the file).
    pub contents: Option<String>,
    /// Commands run before the file is removed (uninstall) or after it is written
    /// (install).
    pub commands: Vec<Vec<String>>,
}

/// Where the service file goes for `manager`, given the user's home and config folders.
pub fn service_file(manager: Manager, home: &Path, config_dir: &Path) -> PathBuf {
    match manager {
        Manager::Systemd => config_dir.join("systemd/user").join(SYSTEMD_UNIT_NAME),
        Manager::Launchd => home
            .join("Library/LaunchAgents")
            .join(format!("{LAUNCHD_LABEL}.plist")),
    }
}

fn words(ws: &[&str]) -> Vec<String> {
    ws.iter().map(|w| w.to_string()).collect()
}

/// The install plan.
pub fn install_plan(
    manager: Manager,
    launch: &Launch,
    home: &Path,
    config_dir: &Path,
    uid: u32,
) -> Plan {
    let file = service_file(manager, home, config_dir);
    match manager {
        Manager::Systemd => Plan {
            contents: Some(systemd_unit(launch)),
            commands: vec![
                words(&["systemctl", "--user", "daemon-reload"]),
                words(&["systemctl", "--user", "enable", "--now", SYSTEMD_UNIT_NAME]),
            ],
            file,
        },
        Manager::Launchd => Plan {
            contents: Some(launchd_plist(launch, home)),
            commands: vec![vec![
                "launchctl".into(),
                "bootstrap".into(),
                format!("gui/{uid}"),
                file.display().to_string(),
            ]],
            file,
        },
    }
}

/// The uninstall plan.
pub fn uninstall_plan(manager: Manager, home: &Path, config_dir: &Path, uid: u32) -> Plan {
    let file = service_file(manager, home, config_dir);
    let commands = match manager {
        Manager::Systemd => vec![
            words(&["systemctl", "--user", "disable", "--now", SYSTEMD_UNIT_NAME]),
            words(&["systemctl", "--user", "daemon-reload"]),
        ],
        Manager::Launchd => vec![vec![
            "launchctl".into(),
            "bootout".into(),
            format!("gui/{uid}/{LAUNCHD_LABEL}"),
        ]],
    };
    Plan {
        file,
        contents: None,
        commands,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packaged() -> Launch {
        Launch {
            binary: PACKAGED_BINARY.into(),
            imm_home: None,
            config: None,
        }
    }

    #[test]
    fn the_shipped_files_are_the_renderings() {
        assert_eq!(systemd_unit(&packaged()), SYSTEMD_UNIT);
        let shipped = include_str!("../launchd/dev.imm-daemon.agent.plist");
        let launch = Launch {
            binary: "/usr/local/bin/imm-daemon".into(),
            ..packaged()
        };
        assert_eq!(launchd_plist(&launch, Path::new("/Users/you")), shipped);
    }

    #[test]
    fn a_custom_launch_is_quoted_and_escaped() {
        let launch = Launch {
            binary: "/opt/my tools/imm-daemon".into(),
            imm_home: Some("/srv/imm 100%".into()),
            config: Some("/etc/imm/c.toml".into()),
        };
        let unit = systemd_unit(&launch);
        assert!(
            unit.contains("ExecStart=\"/opt/my tools/imm-daemon\" --config /etc/imm/c.toml run\n"),
            "{unit}"
        );
        assert!(
            unit.contains("Environment=\"IMM_HOME=/srv/imm 100%%\"\n"),
            "{unit}"
        );
        assert!(unit.contains(" -\"/srv/imm 100%%\" -/etc/imm\n"), "{unit}");
        let plist = launchd_plist(
            &Launch {
                binary: "/Apps/a&b/imm-daemon".into(),
                ..launch
            },
            Path::new("/Users/x"),
        );
        assert!(
            plist.contains("<string>/Apps/a&amp;b/imm-daemon</string>"),
            "{plist}"
        );
        assert!(
            plist.contains("<key>IMM_HOME</key>\n\t\t<string>/srv/imm 100%</string>"),
            "{plist}"
        );
    }

    #[test]
    fn plans_name_the_files_and_commands() {
        let home = Path::new("/home/u");
        let cfg = Path::new("/home/u/.config");
        let p = install_plan(Manager::Systemd, &packaged(), home, cfg, 1000);
        assert_eq!(
            p.file,
            Path::new("/home/u/.config/systemd/user/imm-daemon.service")
        );
        assert_eq!(
            p.commands[1],
            [
                "systemctl",
                "--user",
                "enable",
                "--now",
                "imm-daemon.service"
            ]
        );
        let p = install_plan(Manager::Launchd, &packaged(), home, cfg, 501);
        assert_eq!(
            p.file,
            Path::new("/home/u/Library/LaunchAgents/dev.imm-daemon.agent.plist")
        );
        assert_eq!(p.commands[0][2], "gui/501");
        let p = uninstall_plan(Manager::Launchd, home, cfg, 501);
        assert_eq!(
            p.commands[0],
            ["launchctl", "bootout", "gui/501/dev.imm-daemon.agent"]
        );
        assert_eq!(p.contents, None);
    }
}
