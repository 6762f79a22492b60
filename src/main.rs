//! The `imm-daemon` binary: parses arguments, starts the daemon again once with glibc's
//! per-thread cache off (`memory::exec_without_thread_cache`), sets up logging, maps
//! errors to exit codes.

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
        cli::Command::Run(args) => {
            // Returns only if the program was not started again (see the function).
            // SAFETY: no other thread has started yet.
            #[allow(unsafe_code)]
            let not_restarted = unsafe { imm_daemon::memory::exec_without_thread_cache() };
            imm_daemon::logging::init("info", args.log_format == cli::LogFormat::Json);
            if let Some(e) = not_restarted {
                tracing::warn!(
                    "cannot start again with glibc's per-thread allocation cache off ({e}); \
                     memory after large work may stay up to a megabyte higher"
                );
            }
        }
        _ => imm_daemon::logging::init("warn", false),
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
