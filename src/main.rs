//! The `imm-daemon` binary: parses arguments, sets up logging, maps errors to exit codes.

use clap::Parser;
use imm_daemon::cli::{self, Cli};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                cli::exit::USAGE
            } else {
                cli::exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    match &cli.command {
        cli::Command::Run(args) => init_logging("info", args.log_format == cli::LogFormat::Json),
        _ => init_logging("warn", false),
    }
    match cli::run(cli) {
        Ok(()) => {}
        Err(e) if cli::is_broken_pipe(&e) => {}
        Err(e) => {
            let code = cli::exit_code(&e);
            if !e.chain().any(|c| c.is::<cli::SilentExit>()) {
                eprintln!("error: {e:#}");
            }
            std::process::exit(code);
        }
    }
}

/// Logs go to stderr; the filter comes from IMM_LOG, else RUST_LOG, else `default`
/// (`warn` for commands, `info` for the daemon).
fn init_logging(default: &str, json: bool) {
    let filter = std::env::var("IMM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
