//! The one error vocabulary shared by every module: what a failure means ([`Kind`]),
//! whichever part of the product met it, and the helper that writes an error with its
//! causes on one line.
//!
//! Each domain keeps its own error type, with its sources as sources, and says what each
//! of its errors means by implementing [`Classify`]. The request loops (the sign-in's
//! refresh, the device flow, the mail sender, Exchange's throttling count), the
//! heartbeat's steps and the step history read that [`Kind`], never the error's text;
//! `status`'s attention flag is derived from it. What stays apart are facts about one
//! request, not meanings: the Exchange client's own retry policy (`is_retryable`, a
//! server's Retry-After) and whether a refusal was of the refresh token itself.

use std::time::Duration;

/// What a failure means for whoever meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Trying again later may succeed without anyone acting: the network, a 5xx, a busy
    /// keychain or lock.
    Transient,
    /// The service asked us to slow down, with the wait it named, if it named one.
    RateLimited { wait: Option<Duration> },
    /// Only a person can mend it, by signing in again: the sign-in was revoked, expired,
    /// or a new policy asks for an interaction.
    SignIn,
    /// The service refused what was asked, and repeating it will not help until a person
    /// changes something: a role, a consent, a client's registration, a guard's limit.
    Refused,
    /// Our own side cannot go on: the configuration, a damaged or unusable local file.
    Fatal,
}

impl Kind {
    /// The name used in `status --json` and the cycle history.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Transient => "transient",
            Kind::RateLimited { .. } => "rate_limited",
            Kind::SignIn => "sign_in",
            Kind::Refused => "refused",
            Kind::Fatal => "fatal",
        }
    }

    /// Trying again later may cure it.
    pub fn retry_may_cure(self) -> bool {
        matches!(self, Kind::Transient | Kind::RateLimited { .. })
    }

    /// A person must act before it clears: `status` asks for attention.
    pub fn needs_person(self) -> bool {
        !self.retry_may_cure()
    }

    /// The wait the service asked for, if it did.
    pub fn wait(self) -> Option<Duration> {
        match self {
            Kind::RateLimited { wait } => wait,
            _ => None,
        }
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(match &*name {
            "transient" => Kind::Transient,
            "rate_limited" => Kind::RateLimited { wait: None },
            "sign_in" => Kind::SignIn,
            "refused" => Kind::Refused,
            "fatal" => Kind::Fatal,
            other => {
                return Err(serde::de::Error::unknown_variant(
                    other,
                    &["transient", "rate_limited", "sign_in", "refused", "fatal"],
                ));
            }
        })
    }
}

/// An error that says what it means.
pub trait Classify: std::error::Error {
    fn kind(&self) -> Kind;
}

/// An error and its causes in one line (`outer: cause: root cause`), for logs, audit
/// rows and step reports.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_say_who_must_act_and_keep_their_names() {
        let all = [
            Kind::Transient,
            Kind::RateLimited {
                wait: Some(Duration::from_secs(7)),
            },
            Kind::SignIn,
            Kind::Refused,
            Kind::Fatal,
        ];
        let people: Vec<bool> = all.iter().map(|k| k.needs_person()).collect();
        assert_eq!(people, [false, false, true, true, true]);
        assert_eq!(all[1].wait(), Some(Duration::from_secs(7)));
        assert_eq!(Kind::Transient.wait(), None);
        for k in all {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            let back: Kind = serde_json::from_str(&json).unwrap();
            assert_eq!(back.name(), k.name());
        }
        assert!(serde_json::from_str::<Kind>("\"panic\"").is_err());
    }
}
