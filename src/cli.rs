//! Command-line parsing, dispatch and exit codes. Commands live one per file below; they
//! call the library and format what it returns, and never run SQL themselves.

mod audit_cmd;
mod auth_cmd;
mod config_cmd;
mod daemon_cmd;
mod mail_cmd;
mod mailboxes;
pub mod output;
mod service_cmd;
pub mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::import::ImportError;
use crate::paths::Paths;
use crate::store::{Store, StoreError};

/// Exit codes; monitoring relies on them, so they are part of the interface.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A failure not listed below.
    pub const FAILURE: i32 = 1;
    /// The command line was not understood.
    pub const USAGE: i32 = 2;
    /// `audit verify` found the hash chain broken.
    pub const AUDIT_BROKEN: i32 = 5;
    /// An input file's content is invalid (an import that names the bad record).
    pub const DATA: i32 = 65;
    /// An input file is missing or unreadable.
    pub const NO_INPUT: i32 = 66;
    /// The database cannot be used (written by a newer version, not ours, unreadable).
    pub const DATABASE: i32 = 69;
    /// `run`: another imm-daemon already runs for this IMM_HOME (it holds the lock).
    pub const ALREADY_RUNNING: i32 = 75;
    /// A file or folder another local user could change (EX_NOPERM).
    pub const NO_PERM: i32 = 77;
    /// The configuration file is invalid, or missing where one is required.
    pub const CONFIG: i32 = 78;
}

/// An error that has already been reported and only sets the exit code.
#[derive(Debug, thiserror::Error)]
#[error("exit code {code}")]
pub struct SilentExit {
    pub code: i32,
}

/// imm-daemon: Exchange Online inactive mailboxes, sign-in and mail for Microsoft 365 admins.
#[derive(Debug, Parser)]
#[command(name = "imm-daemon", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (default: the platform's config folder; also IMM_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write, check and locate the configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCmd),
    /// The inactive-mailbox inventory: import, list, search, show, stats, export.
    #[command(subcommand)]
    Mailboxes(mailboxes::MailboxesCmd),
    /// The tamper-evident audit log: list, export, verify, prune.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// Sign in to Microsoft with a device code (or show the code the daemon holds), or
    /// import the sign-in from an MSAL token cache.
    Login(auth_cmd::LoginArgs),
    /// Remove the tokens from every token store (keychain and encrypted file).
    Logout,
    /// Print a fresh access token for scripts (refreshing it if needed).
    Token(auth_cmd::TokenArgs),
    /// Queue a mail (or a JSON Lines batch of mails) for sending through Microsoft Graph.
    Send(mail_cmd::SendArgs),
    /// The outgoing mail queue: list, show, retry, cancel, purge.
    #[command(subcommand)]
    Queue(mail_cmd::QueueCmd),
    /// Run the daemon in the foreground (what launchd and systemd start).
    Run(RunArgs),
    /// Whether the daemon runs and is healthy (exit 0 healthy, 1 needs attention,
    /// 3 not running, 4 unknown).
    Status(status::StatusArgs),
    /// Run one cycle now: in the running daemon, else in this process.
    Cycle(daemon_cmd::CycleArgs),
    /// Refresh the inactive-mailbox cache from its source now (a cycle with the sync
    /// due), through the daemon when it runs.
    Sync(daemon_cmd::SyncArgs),
    /// Stop the running daemon and wait until it has exited.
    Stop,
    /// Install, remove or inspect the systemd user service or launchd agent.
    #[command(subcommand)]
    Service(service_cmd::ServiceCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), for `man -l -` or a man folder.
    Man,
}

/// Options of `imm-daemon run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// What every command may need, resolved once.
pub struct Context {
    pub paths: Paths,
    /// The configuration as this command first read it: one command acts on one reading.
    config: std::cell::OnceCell<Config>,
}

impl Context {
    pub fn new(paths: Paths) -> Context {
        Context {
            paths,
            config: std::cell::OnceCell::new(),
        }
    }

    /// The configuration, read once per command (see [`Context::load_config`]).
    pub fn config(&self) -> Result<Config, ConfigError> {
        if let Some(c) = self.config.get() {
            return Ok(c.clone());
        }
        let c = self.load_config()?;
        Ok(self.config.get_or_init(|| c).clone())
    }

    /// Reads the configuration afresh (the daemon, at its start and at every reload); a
    /// missing file at the default location means the defaults, a missing file that was
    /// named explicitly is an error. The file, its folders and any `key_file` are checked
    /// first (see [`crate::paths::strict`]), at every read.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        #[cfg(unix)]
        self.paths
            .check_config_file()
            .map_err(|e| ConfigError::Unsafe(Box::new(e)))?;
        let config = match self.paths.config_source {
            crate::paths::ConfigSource::Default => Config::load_or_default(&self.paths.config_file),
            _ => Config::load(&self.paths.config_file),
        }?;
        #[cfg(unix)]
        if let Some(key) = &config.auth.key_file {
            crate::paths::strict::check(key.as_path())
                .map_err(|e| ConfigError::Unsafe(Box::new(e)))?;
        }
        Ok(config)
    }

    /// Opens (and migrates) the database. Commands wait `[database] busy_timeout` for
    /// other processes' writes (the default when the configuration cannot be read; the
    /// command reports that itself).
    pub fn store(&self) -> Result<Store, StoreError> {
        let wait = self
            .config()
            .map(|c| c.database.busy_timeout.get())
            .unwrap_or(crate::config::CLI_BUSY_TIMEOUT);
        Store::open_audited(&self.paths.database, &self.paths.audit_head, wait)
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = match Paths::resolve(cli.config.as_deref()) {
        Ok(p) => p,
        // Monitoring reads `status`'s exit code: what cannot be looked at is "unknown".
        Err(e) if matches!(cli.command, Command::Status(_)) => {
            eprintln!("error: {e}");
            return Err(SilentExit {
                code: status::code::UNKNOWN,
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    #[cfg(unix)]
    if !matches!(cli.command, Command::Completions { .. } | Command::Man)
        && let Err(e) = paths.check_private()
    {
        if matches!(cli.command, Command::Status(_)) {
            // What cannot be looked at safely is "unknown" to monitoring, as above.
            eprintln!("error: {e}");
            return Err(SilentExit {
                code: status::code::UNKNOWN,
            }
            .into());
        }
        return Err(e.into());
    }
    let ctx = Context::new(paths);
    match cli.command {
        Command::Config(c) => config_cmd::run(&ctx, c),
        Command::Mailboxes(c) => mailboxes::run(&ctx, c),
        Command::Audit(c) => audit_cmd::run(&ctx, c),
        Command::Login(args) => auth_cmd::login(&ctx, args),
        Command::Logout => auth_cmd::logout(&ctx),
        Command::Token(args) => auth_cmd::token(&ctx, args),
        Command::Send(args) => mail_cmd::send(&ctx, args),
        Command::Queue(c) => mail_cmd::queue(&ctx, c),
        Command::Run(_) => Ok(crate::daemon::run(&ctx.paths, &|| ctx.load_config())?),
        Command::Status(args) => status::run(&ctx, args),
        Command::Cycle(args) => daemon_cmd::cycle(&ctx, args),
        Command::Sync(args) => daemon_cmd::sync(&ctx, args),
        Command::Stop => daemon_cmd::stop(&ctx),
        Command::Service(c) => service_cmd::run(&ctx, c),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "imm-daemon", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

/// The exit code for an error, read from the first error in its chain that has one.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(s) = cause.downcast_ref::<SilentExit>() {
            return s.code;
        }
        #[cfg(unix)]
        if cause
            .downcast_ref::<crate::paths::strict::StrictError>()
            .is_some()
        {
            return exit::NO_PERM;
        }
        match cause.downcast_ref::<crate::daemon::DaemonError>() {
            Some(crate::daemon::DaemonError::Config(e)) => return config_exit(e),
            Some(crate::daemon::DaemonError::Lock(crate::control::lock::LockError::Held {
                ..
            })) => return exit::ALREADY_RUNNING,
            Some(crate::daemon::DaemonError::Store(e)) => {
                return match e {
                    StoreError::AuditBroken { .. } => exit::AUDIT_BROKEN,
                    _ => exit::DATABASE,
                };
            }
            Some(_) => return exit::FAILURE,
            None => {}
        }
        if let Some(crate::auth::AuthError::NotConfigured(_)) = cause.downcast_ref() {
            return exit::CONFIG;
        }
        if let Some(e) = cause.downcast_ref::<ConfigError>() {
            return config_exit(e);
        }
        if let Some(e) = cause.downcast_ref::<mail_cmd::SendError>() {
            return e.exit_code();
        }
        if let Some(crate::sync::LoadError::TooManyRemovals(_)) = cause.downcast_ref() {
            return exit::DATA;
        }
        if let Some(e) = cause.downcast_ref::<ImportError>() {
            return match e {
                ImportError::Read { .. } => exit::NO_INPUT,
                _ => exit::DATA,
            };
        }
        match cause.downcast_ref::<StoreError>() {
            Some(
                StoreError::TooNew { .. }
                | StoreError::Foreign { .. }
                | StoreError::Open { .. }
                | StoreError::Damaged { .. }
                | StoreError::AuditHead { .. }
                | StoreError::Migrate { .. },
            ) => return exit::DATABASE,
            Some(StoreError::AuditBroken { .. }) => return exit::AUDIT_BROKEN,
            _ => {}
        }
        // SQLite finding the file damaged part-way through a command.
        if let Some(rusqlite::Error::SqliteFailure(e, _)) = cause.downcast_ref::<rusqlite::Error>()
            && matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            )
        {
            return exit::DATABASE;
        }
    }
    exit::FAILURE
}

fn config_exit(e: &ConfigError) -> i32 {
    match e {
        #[cfg(unix)]
        ConfigError::Unsafe(_) => exit::NO_PERM,
        _ => exit::CONFIG,
    }
}

/// Writes an export file with its audit row: the file is written and flushed beside its
/// target, the audit row commits, and only then is the file renamed into place, so an
/// export never appears unaudited. Any failure is audited as one.
pub fn audited_write(
    store: &mut Store,
    event: &crate::audit::AuditEvent,
    now: chrono::DateTime<chrono::Utc>,
    path: &std::path::Path,
    contents: &[u8],
) -> anyhow::Result<()> {
    let result = crate::paths::prepare_atomic(path, contents)
        .map_err(anyhow::Error::from)
        .and_then(|pending| {
            store.audit(event, now)?;
            pending.commit()?;
            Ok(())
        });
    if let Err(e) = &result {
        audit_failure(store, event, now, e)?;
    }
    result
}

/// Records that an audited operation failed; if even that cannot be written, says so.
pub fn audit_failure(
    store: &mut Store,
    event: &crate::audit::AuditEvent,
    now: chrono::DateTime<chrono::Utc>,
    err: &anyhow::Error,
) -> anyhow::Result<()> {
    store
        .audit(&event.clone().failed(format!("{err:#}")), now)
        .map(|_| ())
        .map_err(|audit_err| {
            anyhow::Error::new(audit_err).context(format!(
                "writing the audit row of a failed operation ({err:#})"
            ))
        })
}

/// Whether the error is a closed stdout (`imm-daemon mailboxes list | head`), which is
/// no failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Parses a point in time for `--since` / `--until`: RFC 3339, a date (midnight UTC), or
/// a duration ago such as `7d` or `12h`.
pub fn parse_when(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    if let Ok(d) = humantime::parse_duration(s) {
        let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
        return chrono::Utc::now()
            .checked_sub_signed(d)
            .ok_or_else(|| format!("`{s}` reaches too far back"));
    }
    Err(format!(
        "`{s}` is not a time: use RFC 3339 (2025-01-31T12:00:00Z), a date (2025-01-31) or a duration ago (7d, 12h)"
    ))
}

/// Parses a duration such as `365d` or `30d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration such as 30d or 12h: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(
            parse_when("2025-01-31").unwrap().to_rfc3339(),
            "2025-01-31T00:00:00+00:00"
        );
        assert!(parse_when("2025-01-31T12:00:00+02:00").is_ok());
        let ago = parse_when("1d").unwrap();
        assert!((chrono::Utc::now() - ago).num_hours() >= 23);
        assert!(parse_when("last tuesday").is_err());
        assert_eq!(parse_duration("365d").unwrap().as_secs(), 365 * 86400);
        assert!(parse_duration("soon").is_err());
    }
}
