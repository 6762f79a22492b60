//! `imm-daemon service install | uninstall | status`: the systemd user unit or the launchd
//! agent for this binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Subcommand;

use super::Context;
use crate::service::{Launch, Manager, Plan, install_plan, service_file, uninstall_plan};

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Write the service file for this binary and start the service.
    Install {
        /// Print the file and the commands instead of writing and running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop the service and remove its file.
    Uninstall {
        /// Print what would be run and removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Whether the service file is installed and what the service manager says of it.
    Status {
        /// Print the service manager's command instead of running it.
        #[arg(long)]
        dry_run: bool,
    },
}

struct Where {
    manager: Manager,
    home: PathBuf,
    config_dir: PathBuf,
    uid: u32,
}

fn locate() -> anyhow::Result<Where> {
    let manager = Manager::current().ok_or_else(|| {
        anyhow::anyhow!("services are supported on Linux (systemd) and macOS (launchd) only")
    })?;
    let dirs = directories::BaseDirs::new()
        .ok_or_else(|| anyhow::anyhow!("cannot find the home folder (is HOME set?)"))?;
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dirs.home_dir())
            .map(|m| m.uid())
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the home folder {}: {e}",
                    dirs.home_dir().display()
                )
            })?
    };
    Ok(Where {
        manager,
        home: dirs.home_dir().to_path_buf(),
        config_dir: dirs.config_dir().to_path_buf(),
        uid,
    })
}

fn show(cmd: &[String]) -> String {
    cmd.iter()
        .map(|w| {
            if w.chars().any(|c| c.is_whitespace()) {
                format!("'{w}'")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_command(cmd: &[String]) -> anyhow::Result<()> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run `{}`: {e}", show(cmd)))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{}` failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn run(ctx: &Context, cmd: ServiceCmd) -> anyhow::Result<()> {
    let w = locate()?;
    match cmd {
        ServiceCmd::Install { dry_run } => {
            let binary = std::env::current_exe()
                .and_then(|p| p.canonicalize())
                .map_err(|e| anyhow::anyhow!("cannot find this program's path: {e}"))?;
            let launch = Launch {
                binary,
                // Under IMM_HOME every folder is a child of it.
                imm_home: std::env::var_os(crate::paths::ENV_HOME)
                    .filter(|v| !v.is_empty())
                    .and_then(|_| ctx.paths.data_dir.parent().map(Path::to_path_buf)),
                config: match ctx.paths.config_source {
                    crate::paths::ConfigSource::Default => None,
                    _ => Some(ctx.paths.config_file.clone()),
                },
            };
            let plan = install_plan(w.manager, &launch, &w.home, &w.config_dir, w.uid);
            if dry_run {
                return print_plan(&plan, "write");
            }
            install(&plan, &w)?;
            println!("installed {} and started the service", plan.file.display());
            Ok(())
        }
        ServiceCmd::Uninstall { dry_run } => {
            let plan = uninstall_plan(w.manager, &w.home, &w.config_dir, w.uid);
            if dry_run {
                return print_plan(&plan, "remove");
            }
            if !plan.file.exists() {
                println!("not installed ({} does not exist)", plan.file.display());
                return Ok(());
            }
            for c in &plan.commands {
                // Stopping a service that is not loaded is not an error here.
                if let Err(e) = run_command(c) {
                    tracing::warn!("{e:#}");
                }
            }
            std::fs::remove_file(&plan.file)
                .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", plan.file.display()))?;
            println!("stopped the service and removed {}", plan.file.display());
            Ok(())
        }
        ServiceCmd::Status { dry_run } => {
            let file = service_file(w.manager, &w.home, &w.config_dir);
            let query: Vec<String> = match w.manager {
                Manager::Systemd => [
                    "systemctl",
                    "--user",
                    "status",
                    "--no-pager",
                    crate::service::SYSTEMD_UNIT_NAME,
                ]
                .map(String::from)
                .to_vec(),
                Manager::Launchd => vec![
                    "launchctl".into(),
                    "print".into(),
                    format!("gui/{}/{}", w.uid, crate::service::LAUNCHD_LABEL),
                ],
            };
            println!(
                "service file: {} ({})",
                file.display(),
                if file.exists() {
                    "installed"
                } else {
                    "not installed"
                }
            );
            if dry_run {
                println!("would run: {}", show(&query));
                return Ok(());
            }
            let out = Command::new(&query[0])
                .args(&query[1..])
                .output()
                .map_err(|e| anyhow::anyhow!("cannot run `{}`: {e}", show(&query)))?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            Ok(())
        }
    }
}

fn print_plan(plan: &Plan, verb: &str) -> anyhow::Result<()> {
    match &plan.contents {
        Some(text) => {
            println!("would {verb} {}:", plan.file.display());
            println!("----");
            print!("{text}");
            println!("----");
        }
        None => println!("would {verb} {}", plan.file.display()),
    }
    for c in &plan.commands {
        println!("would run: {}", show(c));
    }
    Ok(())
}

fn install(plan: &Plan, w: &Where) -> anyhow::Result<()> {
    let text = plan.contents.as_deref().unwrap_or_default();
    if let Some(dir) = plan.file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if w.manager == Manager::Launchd {
        // launchd does not create the log folder.
        crate::paths::ensure_private_dir(&w.home.join("Library/Logs/imm-daemon"))?;
        // A loaded agent must be unloaded before it is loaded again.
        let _ = run_command(&[
            "launchctl".into(),
            "bootout".into(),
            format!("gui/{}/{}", w.uid, crate::service::LAUNCHD_LABEL),
        ]);
    }
    crate::paths::write_atomic(&plan.file, text.as_bytes())?;
    for c in &plan.commands {
        run_command(c)?;
    }
    Ok(())
}
