//! `imm-daemon config init | check | paths`.

use std::io::Write;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::Context;
use crate::config::{Config, SAMPLE};

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Write a commented sample configuration file.
    Init {
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate the configuration and print the effective settings.
    Check,
    /// Print every file and folder imm-daemon uses.
    Paths {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &Context, cmd: ConfigCmd) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        ConfigCmd::Init { force } => {
            let path = &ctx.paths.config_file;
            if path.exists() && !force {
                bail!(
                    "{} already exists; use --force to replace it",
                    path.display()
                );
            }
            let pending = crate::paths::prepare_atomic(path, SAMPLE.as_bytes())?;
            if force {
                pending.commit()?;
            } else {
                // Refuses, rather than replaces, a file created since the check above.
                pending.commit_new().with_context(|| {
                    format!(
                        "{} already exists; use --force to replace it",
                        path.display()
                    )
                })?;
            }
            writeln!(out, "wrote {}", path.display())?;
        }
        ConfigCmd::Check => {
            let path = &ctx.paths.config_file;
            let cfg = Config::load(path)?;
            for w in cfg.warnings() {
                eprintln!("warning: {w}");
            }
            writeln!(
                out,
                "# {} is valid; effective configuration:",
                path.display()
            )?;
            let text = toml::to_string(&cfg).context("rendering the configuration")?;
            out.write_all(text.as_bytes())?;
            writeln!(out, "\n# endpoints in effect")?;
            match (&cfg.oidc_authority, cfg.authority_url()) {
                (Some(o), _) => writeln!(out, "# oidc_authority = {}", o.as_url())?,
                (None, Some(a)) => writeln!(out, "# authority = {a}")?,
                (None, None) => writeln!(out, "# authority = (no tenant set)")?,
            }
            writeln!(out, "# graph_url = {}", cfg.graph_url())?;
            writeln!(out, "# exchange_url = {}", cfg.exchange_url())?;
        }
        ConfigCmd::Paths { json } => {
            let p = &ctx.paths;
            if json {
                super::output::write_json(&mut out, p)?;
            } else {
                let source = match p.config_source {
                    crate::paths::ConfigSource::Flag => "--config",
                    crate::paths::ConfigSource::Env => crate::paths::ENV_CONFIG,
                    crate::paths::ConfigSource::Default => "default",
                };
                for (name, path) in [
                    ("config file", &p.config_file),
                    ("config dir", &p.config_dir),
                    ("data dir", &p.data_dir),
                    ("database", &p.database),
                    ("state dir", &p.state_dir),
                    ("runtime dir", &p.runtime_dir),
                    ("lock file", &p.lock_file),
                    ("socket", &p.socket),
                    ("state file", &p.state_file),
                ] {
                    write!(out, "{name:<12} {}", path.display())?;
                    if name == "config file" {
                        write!(out, " ({source})")?;
                    }
                    writeln!(out)?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}
