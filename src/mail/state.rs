//! The state of a queued mail, as the queue stores it, the command line takes it
//! (`queue list --state`) and listings show it: one name per state, written once in
//! [`MailState::as_str`].
//!
//! A mail is `queued` (waiting for its due time), `sending` (an attempt began: its
//! outcome is settled before anything else is sent), `sent`, `failed` (for good, until a
//! person retries it) or `cancelled`. The database's CHECK constraint holds the same
//! five names; a value it somehow holds that is none of them reads as an
//! [`UnknownMailState`] error naming the value, never as a panic.

use std::fmt;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Where a mail is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailState {
    /// Waiting for its due time.
    Queued,
    /// An attempt began: the mail may be on its way.
    Sending,
    /// Sent (confirmed in the sender's Sent Items or accepted by Graph).
    Sent,
    /// Failed for good, until a person retries it.
    Failed,
    /// Cancelled by a person.
    Cancelled,
}

impl MailState {
    /// Every state, in the order of the queue's life.
    pub const ALL: [MailState; 5] = [
        MailState::Queued,
        MailState::Sending,
        MailState::Sent,
        MailState::Failed,
        MailState::Cancelled,
    ];

    /// The state's name, as stored, taken and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            MailState::Queued => "queued",
            MailState::Sending => "sending",
            MailState::Sent => "sent",
            MailState::Failed => "failed",
            MailState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for MailState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored state that is none of the queue's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a mail state (queued, sending, sent, failed or cancelled)")]
pub struct UnknownMailState(pub String);

impl std::str::FromStr for MailState {
    type Err = UnknownMailState;

    fn from_str(s: &str) -> Result<MailState, UnknownMailState> {
        MailState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownMailState(s.chars().take(40).collect()))
    }
}

impl ToSql for MailState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(
            self.as_str().as_bytes(),
        )))
    }
}

impl FromSql for MailState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<MailState> {
        value
            .as_str()?
            .parse()
            .map_err(|e: UnknownMailState| FromSqlError::Other(Box::new(e)))
    }
}

/// `--state`'s values: the stored names.
impl clap::ValueEnum for MailState {
    fn value_variants<'a>() -> &'a [MailState] {
        &MailState::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_one_name_in_sql_json_and_on_the_command_line() {
        use clap::ValueEnum as _;
        let names: Vec<&str> = MailState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["queued", "sending", "sent", "failed", "cancelled"]);
        for state in MailState::ALL {
            let name = state.as_str();
            assert_eq!(state.to_string(), name);
            assert_eq!(name.parse::<MailState>(), Ok(state));
            assert_eq!(serde_json::to_value(state).unwrap(), name);
            assert_eq!(MailState::from_str(name, false), Ok(state));
            assert_eq!(
                state.to_sql().unwrap(),
                ToSqlOutput::Borrowed(ValueRef::Text(name.as_bytes()))
            );
            assert_eq!(
                MailState::column_result(ValueRef::Text(name.as_bytes())).unwrap(),
                state
            );
        }
    }

    #[test]
    fn a_stored_value_that_is_no_state_is_an_error_naming_it() {
        let e = MailState::column_result(ValueRef::Text(b"archived")).unwrap_err();
        let FromSqlError::Other(inner) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            inner.to_string(),
            "`archived` is not a mail state (queued, sending, sent, failed or cancelled)"
        );
        // Names are exact: no other case, no spaces.
        for bad in ["Queued", " sent", "", "cancelled\0"] {
            assert!(
                MailState::column_result(ValueRef::Text(bad.as_bytes())).is_err(),
                "{bad:?}"
            );
        }
        // Not text at all: a number, bytes that are not UTF-8, nothing.
        assert_eq!(
            MailState::column_result(ValueRef::Integer(1)),
            Err(FromSqlError::InvalidType)
        );
        assert!(MailState::column_result(ValueRef::Text(b"qu\xffeued")).is_err());
        assert_eq!(
            MailState::column_result(ValueRef::Null),
            Err(FromSqlError::InvalidType)
        );
        // A long value is shown cut short.
        let long = "x".repeat(1000);
        let e = long.parse::<MailState>().unwrap_err();
        assert_eq!(e.0.len(), 40);
    }
}
