//! Where log lines go and how they look, decided by where stderr leads:
//!
//! - `--log-format json`: one JSON object per line.
//! - Under systemd (`JOURNAL_STREAM` names the device and inode stderr is connected to):
//!   plain lines with the syslog priority in front (`<3>` error, `<4>` warning, `<6>`
//!   info, `<7>` debug and trace), which journald reads as the line's priority, and no
//!   timestamp of our own (the journal keeps its own), so that
//!   `journalctl --user -u imm-daemon -p err` shows the errors.
//! - Anywhere else: timestamped lines, coloured only when stderr is a terminal and
//!   `NO_COLOR` is not set (<https://no-color.org>), so a log file (launchd's
//!   `StandardErrorPath`, a redirect) holds plain text.
//!
//! The filter comes from `IMM_LOG`, else `RUST_LOG`, else the caller's default.

use std::ffi::OsString;
use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Json,
    /// To the journal: a priority prefix, no timestamp, no colour.
    Journal,
    /// Timestamped lines, with colour or without.
    Plain {
        ansi: bool,
    },
}

/// The style for a process whose stderr is (or is not) a terminal and is the file
/// `stderr_id` (device, inode), with the environment read through `env`.
pub fn style(
    json: bool,
    env: impl Fn(&str) -> Option<OsString>,
    stderr_is_terminal: bool,
    stderr_id: Option<(u64, u64)>,
) -> Style {
    if json {
        return Style::Json;
    }
    if let (Some(stream), Some(id)) = (env("JOURNAL_STREAM"), stderr_id)
        && journal_stream(&stream) == Some(id)
    {
        return Style::Journal;
    }
    let no_color = env("NO_COLOR").is_some_and(|v| !v.is_empty());
    Style::Plain {
        ansi: stderr_is_terminal && !no_color,
    }
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE`.
fn journal_stream(value: &OsString) -> Option<(u64, u64)> {
    let (dev, ino) = value.to_str()?.split_once(':')?;
    Some((dev.trim().parse().ok()?, ino.trim().parse().ok()?))
}

/// The device and inode stderr is connected to.
#[cfg(unix)]
fn stderr_id() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn stderr_id() -> Option<(u64, u64)> {
    None
}

/// The syslog priority of a level, as journald reads it from a line's `<N>` prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Lines for the journal: `<N>` and the message with its fields.
pub struct JournalFormat;

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Sets up logging to stderr for the whole process.
pub fn init(default: &str, json: bool) {
    use std::io::IsTerminal;
    let filter = std::env::var("IMM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match style(
        json,
        |k| std::env::var_os(k),
        std::io::stderr().is_terminal(),
        stderr_id(),
    ) {
        Style::Json => builder.json().init(),
        Style::Journal => builder.with_ansi(false).event_format(JournalFormat).init(),
        Style::Plain { ansi } => builder.with_ansi(ansi).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_style_follows_where_stderr_leads() {
        let id = Some((64769, 1234));
        // The journal only when JOURNAL_STREAM names stderr itself.
        assert_eq!(
            style(false, env(&[("JOURNAL_STREAM", "64769:1234")]), false, id),
            Style::Journal
        );
        assert_eq!(
            style(false, env(&[("JOURNAL_STREAM", "64769:9999")]), false, id),
            Style::Plain { ansi: false },
            "stderr was redirected away from the journal"
        );
        assert_eq!(
            style(false, env(&[("JOURNAL_STREAM", "nonsense")]), true, id),
            Style::Plain { ansi: true }
        );
        // JSON when asked, wherever stderr leads.
        assert_eq!(
            style(true, env(&[("JOURNAL_STREAM", "64769:1234")]), false, id),
            Style::Json
        );
        // Colour on a terminal, unless NO_COLOR says otherwise (an empty one does not).
        assert_eq!(
            style(false, env(&[]), true, id),
            Style::Plain { ansi: true }
        );
        assert_eq!(
            style(false, env(&[]), false, id),
            Style::Plain { ansi: false }
        );
        assert_eq!(
            style(false, env(&[("NO_COLOR", "1")]), true, id),
            Style::Plain { ansi: false }
        );
        assert_eq!(
            style(false, env(&[("NO_COLOR", "")]), true, id),
            Style::Plain { ansi: true }
        );
    }

    /// A writer that keeps what it was given.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_their_priority_and_no_timestamp_or_colour() {
        let kept = Kept::default();
        let writer = kept.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .event_format(JournalFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(step = "mail", "step failed: boom");
            tracing::warn!("a warning");
            tracing::info!(pid = 7, "imm-daemon running");
            tracing::debug!("a detail");
            tracing::trace!("a trace");
        });
        let text = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "<3>step failed: boom step=\"mail\"",
                "<4>a warning",
                "<6>imm-daemon running pid=7",
                "<7>a detail",
                "<7>a trace",
            ]
        );
        assert!(!text.contains('\u{1b}'));
    }
}
