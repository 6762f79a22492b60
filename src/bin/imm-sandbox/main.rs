//! `imm-sandbox`: imm-daemon against an emulated Microsoft 365 tenant, in one command.
//!
//! It starts, on 127.0.0.1, the loopback emulations of the identity platform, Microsoft
//! Graph and the Exchange Online admin endpoint (the `imm-emulators` crate the tests use)
//! with a synthetic tenant, writes a configuration that points at them into a throwaway
//! `IMM_HOME`, and runs the real `imm-daemon` binary there: the same configuration file,
//! sign-in, token store, queue, bucket and sync as against Microsoft, only with loopback
//! URLs. The person's own configuration, database and keychain are never touched (the
//! tokens go to the encrypted file, under a key made for this home).
//!
//! While it runs it tells what the daemon does (from `imm-daemon status --json`, the
//! emulators and the notification webhook), and serves a console page where a person
//! approves the sign-in and triggers scenarios; the same scenarios are subcommands
//! (`imm-sandbox throttle graph`, `imm-sandbox revoke`, ...) for another terminal.
//!
//! The daemon binary and this one are separate so that the daemon stays free of the
//! emulators and their web server: this binary is built only with the `sandbox` feature
//! (on by default), and drives `imm-daemon` as a person would, through its commands.

mod console;
mod daemon;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use console::Action;

/// Try imm-daemon against an emulated Microsoft 365 tenant on 127.0.0.1: sign-in, the
/// mail queue, the inventory sync and the audit log, without a tenant of your own.
#[derive(Debug, Parser)]
#[command(name = "imm-sandbox", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the emulated tenant and a daemon against it (what `imm-sandbox` alone does)
    Run(RunArgs),
    /// Approve the sign-in code the daemon is waiting on, as the person would on the
    /// sign-in page
    Approve(Target),
    /// Graph or Exchange answers the next requests with 429 Too Many Requests and a
    /// Retry-After
    Throttle {
        /// Which service throttles
        service: Service,
        /// How many requests are refused
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        requests: u32,
        /// The Retry-After sent, in seconds
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600))]
        retry_after: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Graph delivers the next mail but its answer is lost (504): the duplicate trap
    LoseAnswer(Target),
    /// Revoke the sign-in (as an administrator or a password reset would): the daemon
    /// asks for a person again and the notification hook fires
    Revoke(Target),
    /// Remove every hold of an inactive mailbox, so the next sync reports
    /// `holds_released`
    ReleaseHolds {
        /// Its ExchangeGuid, address or display name (default: one picked at random)
        mailbox: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// New inactive mailboxes appear in the tenant
    AddMailboxes {
        #[arg(default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Inactive mailboxes leave the tenant (recovered or purged)
    RemoveMailboxes {
        #[arg(default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Queue mails through `imm-daemon send`; the daemon sends them as the bucket allows
    QueueMails {
        #[arg(default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Ask the daemon for a sync now (`imm-daemon sync`)
    Sync(Target),
    /// Where the running sandbox is: its home, console and emulators
    Info(Target),
}

/// Which running sandbox a scenario goes to.
#[derive(Debug, Clone, Args)]
struct Target {
    /// The sandbox's home (default: IMM_HOME, as `export IMM_HOME=...` set it)
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Service {
    Graph,
    Exchange,
}

/// How the sandbox starts.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Approve the sign-in code at once, without a person (for scripts and CI)
    #[arg(long)]
    pub approve: bool,
    /// Inactive mailboxes in the synthetic tenant
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub mailboxes: u32,
    /// Mails queued at the start (the daemon sends them as its bucket allows)
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub mails: u32,
    /// Seed of the synthetic tenant (the same seed gives the same mailboxes)
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Use this folder as IMM_HOME and keep it (default: a new temporary folder, removed
    /// on exit). It must not hold a configuration other than a sandbox's.
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Keep the temporary home on exit
    #[arg(long)]
    pub keep: bool,
    /// Serve the console page on this port (default: any free port)
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The imm-daemon binary to run (default: the one beside imm-sandbox, else on PATH)
    #[arg(long, value_name = "PATH", env = "IMM_SANDBOX_DAEMON")]
    pub daemon: Option<PathBuf>,
    /// Also copy the daemon's log lines to this terminal (they are always in
    /// daemon.log in the home)
    #[arg(long)]
    pub verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run::run(cli.run),
        Some(cmd) => command(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imm-sandbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn command(cmd: Command) -> anyhow::Result<ExitCode> {
    let (action, target) = match cmd {
        Command::Run(args) => return run::run(args),
        Command::Info(target) => return console::info(target.home),
        Command::Approve(t) => (Action::Approve, t),
        Command::Throttle {
            service: Service::Graph,
            requests,
            retry_after,
            target,
        } => (
            Action::ThrottleGraph {
                requests,
                retry_after,
            },
            target,
        ),
        Command::Throttle {
            service: Service::Exchange,
            requests,
            retry_after,
            target,
        } => (
            Action::ThrottleExchange {
                requests,
                retry_after,
            },
            target,
        ),
        Command::LoseAnswer(t) => (Action::LoseAnswer, t),
        Command::Revoke(t) => (Action::Revoke, t),
        Command::ReleaseHolds { mailbox, target } => (Action::ReleaseHolds { mailbox }, target),
        Command::AddMailboxes { count, target } => (Action::AddMailboxes { count }, target),
        Command::RemoveMailboxes { count, target } => (Action::RemoveMailboxes { count }, target),
        Command::QueueMails { count, target } => (Action::QueueMails { count }, target),
        Command::Sync(t) => (Action::Sync, t),
    };
    console::request(target.home, &action)
}
