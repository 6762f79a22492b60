//! The outgoing-mail token bucket: its arithmetic as a pure function of `now`, and its
//! state file, shared by the daemon and the CLI.
//!
//! No crate persists a token bucket (governor, for one, keeps process-relative
//! nanoseconds), so this one is written here. The state records wall-clock time, so a
//! restart keeps what elapsed time has earned and no more; a clock set backwards never
//! creates tokens, and never gives back a day's sends. The daily count belongs to a
//! calendar date in the configured time zone and starts again on a later date, whether
//! the date changed while the daemon ran or while it was down.
//!
//! The file is JSON, replaced atomically (0600) after every change, under an advisory
//! lock beside it so that the daemon and the CLI take turns. An unreadable or corrupt
//! file is not fatal: the caller gets a conservative state (an empty bucket, the day's
//! count rebuilt by the caller from the queue's sent mails) and a warning to record.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Zone;

/// The state file's format version.
pub const STATE_VERSION: u32 = 1;

/// The bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Tokens the bucket holds at most (and mails one cycle can send).
    pub capacity: u32,
    /// Time to earn one token.
    pub refill_every: Duration,
    /// Sends allowed per calendar day.
    pub daily_cap: u32,
}

impl Default for Params {
    /// 20 tokens, one every 5 s, 100 sends a day.
    fn default() -> Params {
        Params {
            capacity: 20,
            refill_every: Duration::from_secs(5),
            daily_cap: 100,
        }
    }
}

/// The persisted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Tokens in the bucket at `last_refill` (fractions count).
    pub tokens: f64,
    /// When `tokens` was last brought up to date (wall clock).
    pub last_refill: DateTime<Utc>,
    /// The calendar date `sent_today` belongs to.
    pub day: NaiveDate,
    pub sent_today: u32,
    /// Sends reserved by a drain that has not given back what it did not use yet. Found
    /// set by the next drain, it means that drain was killed: the day's count is then
    /// taken from the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u32>,
}

impl State {
    /// A full bucket at `now` with nothing sent.
    pub fn full(params: &Params, zone: &Zone, now: DateTime<Utc>) -> State {
        State {
            version: STATE_VERSION,
            tokens: params.capacity as f64,
            last_refill: now,
            day: zone.date_of(now),
            sent_today: 0,
            reserved: None,
        }
    }

    /// The conservative state after a lost or corrupt file: no tokens now (they come back
    /// at the refill rate), and the day's count as rebuilt from the sent mails.
    pub fn conservative(zone: &Zone, now: DateTime<Utc>, sent_today: u32) -> State {
        State {
            version: STATE_VERSION,
            tokens: 0.0,
            last_refill: now,
            day: zone.date_of(now),
            sent_today,
            reserved: None,
        }
    }

    /// The state brought up to `now`: tokens earned since `last_refill` (never beyond
    /// the capacity, never from a clock that went back), and a new day's count on a
    /// later date.
    pub fn at(&self, params: &Params, zone: &Zone, now: DateTime<Utc>) -> State {
        let mut s = self.clone();
        let rate = 1.0 / params.refill_every.as_secs_f64().max(1e-9);
        // A clock that went back earns nothing; counting resumes from the new reading.
        if let Ok(elapsed) = (now - s.last_refill).to_std() {
            s.tokens = (s.tokens + elapsed.as_secs_f64() * rate).min(params.capacity as f64);
        }
        s.tokens = s.tokens.clamp(0.0, params.capacity as f64);
        s.last_refill = now;
        let today = zone.date_of(now);
        // A later date starts a new count. So does a date more than a day ahead of the
        // clock (written while the clock ran ahead, since corrected), which would
        // otherwise stop sending for days; a clock set back by less keeps the count.
        if today > s.day || today.succ_opt().is_some_and(|t| s.day > t) {
            s.day = today;
            s.sent_today = 0;
        }
        s
    }

    /// Sends that may start now: whole tokens, within what is left of the day.
    pub fn available(&self, params: &Params) -> u32 {
        let whole = self.tokens.floor().max(0.0) as u32;
        whole.min(self.daily_remaining(params))
    }

    /// Sends left today.
    pub fn daily_remaining(&self, params: &Params) -> u32 {
        params.daily_cap.saturating_sub(self.sent_today)
    }

    /// Takes one token for a send attempt at `now`; `None` when none is available.
    pub fn take(&self, params: &Params, zone: &Zone, now: DateTime<Utc>) -> Option<State> {
        let mut s = self.at(params, zone, now);
        if s.available(params) == 0 {
            return None;
        }
        s.tokens -= 1.0;
        s.sent_today += 1;
        Some(s)
    }

    /// Reserves up to `want` sends at `now`: a token and one of the day's sends each.
    /// Returns the state after, and how many were reserved.
    pub fn reserve(
        &self,
        params: &Params,
        zone: &Zone,
        now: DateTime<Utc>,
        want: u32,
    ) -> (State, u32) {
        let mut s = self.at(params, zone, now);
        let n = s.available(params).min(want);
        s.tokens -= f64::from(n);
        s.sent_today += n;
        s.reserved = (n > 0).then_some(n);
        (s, n)
    }

    /// Takes one token (and none of the day's sends: the mail already holds one) for a
    /// repeated attempt; `None` when the bucket has no whole token.
    pub fn take_token(&self, params: &Params, zone: &Zone, now: DateTime<Utc>) -> Option<State> {
        let mut s = self.at(params, zone, now);
        if s.tokens < 1.0 {
            return None;
        }
        s.tokens -= 1.0;
        Some(s)
    }

    /// Gives back what a reservation made on `day` did not use: `tokens` never spent on
    /// an attempt, and `sends` that certainly did not happen. Tokens never exceed the
    /// capacity; sends of a day that has since ended are not given back to the new day.
    pub fn give_back(
        &self,
        params: &Params,
        zone: &Zone,
        now: DateTime<Utc>,
        day: NaiveDate,
        tokens: u32,
        sends: u32,
    ) -> State {
        let mut s = self.at(params, zone, now);
        s.tokens = (s.tokens + f64::from(tokens)).min(f64::from(params.capacity));
        if s.day == day {
            s.sent_today = s.sent_today.saturating_sub(sends);
        }
        s.reserved = None;
        s
    }

    /// When the next whole token arrives, if the bucket lacks one (as of `last_refill`).
    pub fn next_token_at(&self, params: &Params) -> Option<DateTime<Utc>> {
        if self.tokens >= 1.0 {
            return None;
        }
        let missing = 1.0 - self.tokens;
        let wait = Duration::from_secs_f64(missing * params.refill_every.as_secs_f64());
        Some(self.last_refill + chrono::Duration::from_std(wait).unwrap_or_default())
    }
}

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("cannot use the send-rate lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the send-rate state {path} is unreadable: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error("the send-rate state {path} cannot be right: {detail}")]
    Implausible { path: PathBuf, detail: String },
    #[error(transparent)]
    Write(#[from] crate::paths::PathsError),
}

/// The state file and its lock.
#[derive(Debug, Clone)]
pub struct BucketFile {
    path: PathBuf,
    lock: PathBuf,
}

/// How a load went: the state, and why it was rebuilt if it was.
#[derive(Debug)]
pub struct Loaded {
    pub state: State,
    /// The file was unreadable or corrupt: this is the conservative state, and the
    /// warning to log and audit.
    pub rebuilt: Option<BucketError>,
}

impl BucketFile {
    pub fn new(path: &Path) -> BucketFile {
        BucketFile {
            path: path.to_path_buf(),
            lock: path.with_extension("lock"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the state as of `now` under the lock, and writes what it returns.
    /// `sent_today` rebuilds the day's count when the file must be rebuilt. A missing
    /// file is a full bucket.
    pub fn update<T>(
        &self,
        params: &Params,
        zone: &Zone,
        now: DateTime<Utc>,
        sent_today: impl FnOnce() -> u32,
        f: impl FnOnce(State) -> (State, T),
    ) -> Result<(T, Option<BucketError>), BucketError> {
        let _lock = self.acquire()?;
        let loaded = self.read(params, zone, now, sent_today);
        let (state, out) = f(loaded.state.at(params, zone, now));
        let text = serde_json::to_vec_pretty(&state).expect("states serialize");
        crate::paths::write_atomic(&self.path, &text)?;
        Ok((out, loaded.rebuilt))
    }

    /// The state as of `now`, not written back. No lock is taken: the file is only ever
    /// replaced whole, so a reader sees one complete version (and `status` creates
    /// nothing).
    pub fn peek(
        &self,
        params: &Params,
        zone: &Zone,
        now: DateTime<Utc>,
        sent_today: impl FnOnce() -> u32,
    ) -> Loaded {
        let mut loaded = self.read(params, zone, now, sent_today);
        loaded.state = loaded.state.at(params, zone, now);
        loaded
    }

    fn acquire(&self) -> Result<std::fs::File, BucketError> {
        let err = |source| BucketError::Lock {
            path: self.lock.clone(),
            source,
        };
        let file = crate::paths::open_private(&self.lock)?;
        // Held for a read and a write of a few hundred bytes: waiting is fine.
        file.lock().map_err(err)?;
        Ok(file)
    }

    fn read(
        &self,
        params: &Params,
        zone: &Zone,
        now: DateTime<Utc>,
        sent_today: impl FnOnce() -> u32,
    ) -> Loaded {
        let unreadable = |detail: String| BucketError::Unreadable {
            path: self.path.clone(),
            detail,
        };
        let mut sent_today = Some(sent_today);
        let mut queue_count = || sent_today.take().map_or(0, |f| f());
        let problem = match std::fs::read(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Loaded {
                    state: State::full(params, zone, now),
                    rebuilt: None,
                };
            }
            Err(e) => unreadable(e.to_string()),
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(s) if s.version != STATE_VERSION => {
                    unreadable(format!("version {}, expected {STATE_VERSION}", s.version))
                }
                Ok(s) if !s.tokens.is_finite() || s.tokens < 0.0 => {
                    unreadable(format!("{} tokens", s.tokens))
                }
                // Today's count beyond the daily cap, which no drain writes (it reserves
                // within the cap), and beyond what the queue shows: it would hold sending
                // back until midnight for nothing. A count within the cap is believed even
                // above the queue's, since a mail retried by hand leaves no trace in the
                // queue of its earlier send.
                Ok(s)
                    if s.reserved.is_none()
                        && s.day == zone.date_of(now)
                        && s.sent_today > params.daily_cap =>
                {
                    let queued = queue_count();
                    if s.sent_today <= queued {
                        return Loaded {
                            state: s,
                            rebuilt: None,
                        };
                    }
                    return Loaded {
                        state: State::conservative(zone, now, queued),
                        rebuilt: Some(BucketError::Implausible {
                            path: self.path.clone(),
                            detail: format!(
                                "it counts {} sends today where the queue shows {queued}",
                                s.sent_today
                            ),
                        }),
                    };
                }
                Ok(s) => {
                    return Loaded {
                        state: s,
                        rebuilt: None,
                    };
                }
                Err(e) => unreadable(e.to_string()),
            },
        };
        Loaded {
            state: State::conservative(zone, now, queue_count()),
            rebuilt: Some(problem),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn berlin() -> Zone {
        Zone::parse("Europe/Berlin").unwrap()
    }

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, h, m, s).unwrap()
    }

    #[test]
    fn twenty_then_one_every_five_seconds() {
        let p = Params::default();
        let z = berlin();
        let mut s = State::full(&p, &z, t(10, 0, 0));
        for _ in 0..20 {
            s = s.take(&p, &z, t(10, 0, 0)).unwrap();
        }
        assert!(s.take(&p, &z, t(10, 0, 0)).is_none(), "the 21st waits");
        assert_eq!(s.next_token_at(&p), Some(t(10, 0, 5)));
        assert!(s.take(&p, &z, t(10, 0, 4)).is_none());
        let s = s.take(&p, &z, t(10, 0, 5)).unwrap();
        assert_eq!(s.sent_today, 21);
        // Refill stops at the capacity however long the wait.
        assert_eq!(s.at(&p, &z, t(20, 0, 0)).tokens, 20.0);
    }

    #[test]
    fn a_clock_set_back_earns_nothing_and_keeps_the_day_count() {
        let p = Params::default();
        let z = berlin();
        let mut s = State::full(&p, &z, t(10, 0, 0));
        for _ in 0..20 {
            s = s.take(&p, &z, t(10, 0, 0)).unwrap();
        }
        // An hour back: no tokens, and counting resumes from the new reading.
        let back = s.at(&p, &z, t(9, 0, 0));
        assert_eq!(back.tokens, 0.0);
        assert_eq!(back.sent_today, 20);
        assert_eq!(back.at(&p, &z, t(9, 0, 10)).tokens, 2.0);
        // Back across midnight: yesterday's date never resets today's count.
        let yesterday = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
        assert_eq!(s.at(&p, &z, yesterday).sent_today, 20);
        // A count dated days ahead (written while the clock ran ahead, since corrected)
        // does not stop sending until that date: a new count starts.
        let ahead = State {
            day: NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
            ..s.clone()
        };
        let fixed = ahead.at(&p, &z, t(10, 0, 0));
        assert_eq!(
            (fixed.day, fixed.sent_today),
            (NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(), 0)
        );
    }

    #[test]
    fn the_daily_cap_holds_until_local_midnight() {
        let p = Params {
            daily_cap: 3,
            ..Params::default()
        };
        let z = berlin();
        let mut s = State::full(&p, &z, t(22, 0, 0));
        for _ in 0..3 {
            s = s.take(&p, &z, t(22, 0, 0)).unwrap();
        }
        assert_eq!(s.available(&p), 0);
        assert!(s.take(&p, &z, t(22, 30, 0)).is_none());
        // 23:00 UTC is midnight in Berlin (UTC+1 in November): a new day.
        let s = s.take(&p, &z, t(23, 0, 0)).unwrap();
        assert_eq!(s.sent_today, 1);
        assert_eq!(s.day, NaiveDate::from_ymd_opt(2026, 11, 22).unwrap());
    }

    #[test]
    fn reservations_take_tokens_and_sends_and_give_back_what_was_not_used() {
        let p = Params::default();
        let z = berlin();
        let s = State::full(&p, &z, t(10, 0, 0));
        // 25 due: 20 reserved (the capacity), tokens and the day's sends alike.
        let (s, n) = s.reserve(&p, &z, t(10, 0, 0), 25);
        assert_eq!((n, s.tokens, s.sent_today), (20, 0.0, 20));
        // A repeated attempt needs a token of its own, and none is left yet.
        assert!(s.take_token(&p, &z, t(10, 0, 1)).is_none());
        let s = s.take_token(&p, &z, t(10, 0, 5)).unwrap();
        assert_eq!(
            (s.tokens, s.sent_today),
            (0.0, 20),
            "a repeat is no new send"
        );
        // Three never attempted, five certainly not sent: given back.
        let s = s.give_back(&p, &z, t(10, 0, 5), s.day, 3, 5);
        assert_eq!((s.tokens, s.sent_today), (3.0, 15));
        // Never beyond the capacity, and never into a day that began since.
        let full = State::full(&p, &z, t(10, 0, 0));
        assert_eq!(
            full.give_back(&p, &z, t(10, 0, 0), full.day, 5, 0).tokens,
            20.0
        );
        let yesterday = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let (today, _) = full.reserve(&p, &z, t(10, 0, 0), 4);
        assert_eq!(
            today
                .give_back(&p, &z, t(10, 0, 0), yesterday, 0, 4)
                .sent_today,
            4
        );
        // The daily cap bounds a reservation as the tokens do.
        let capped = Params { daily_cap: 7, ..p };
        let (_, n) = State::full(&capped, &z, t(10, 0, 0)).reserve(&capped, &z, t(10, 0, 0), 25);
        assert_eq!(n, 7);
    }

    #[test]
    fn the_file_survives_restarts_and_a_corrupt_one_is_rebuilt_conservatively() {
        let dir = tempfile::tempdir().unwrap();
        let f = BucketFile::new(&dir.path().join("state/send-bucket.json"));
        let p = Params::default();
        let z = berlin();
        let take = |s: State| match s.take(&p, &z, t(10, 0, 0)) {
            Some(n) => (n, true),
            None => (s, false),
        };
        // What the queue shows: one more send requested after each token taken.
        let queue = std::cell::Cell::new(0);
        for _ in 0..20 {
            let (ok, warn) = f.update(&p, &z, t(10, 0, 0), || queue.get(), take).unwrap();
            assert!(ok && warn.is_none());
            queue.set(queue.get() + 1);
        }
        // Another process (a restart) sees the same bucket: empty, 20 sent.
        let (ok, _) = f.update(&p, &z, t(10, 0, 0), || 20, take).unwrap();
        assert!(!ok);
        // Thirty seconds later, six tokens were earned meanwhile.
        let seen = f.peek(&p, &z, t(10, 0, 30), || 20);
        assert_eq!(seen.state.available(&p), 6);
        assert_eq!(seen.state.sent_today, 20);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(f.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // Corrupt: an empty bucket, the count rebuilt from the queue, and a warning.
        std::fs::write(f.path(), b"{\"version\":1,\"tokens\":").unwrap();
        let loaded = f.peek(&p, &z, t(10, 1, 0), || 17);
        assert_eq!(loaded.state.tokens, 0.0);
        assert_eq!(loaded.state.sent_today, 17);
        let warning = loaded.rebuilt.unwrap().to_string();
        assert!(warning.contains("send-bucket.json"), "{warning}");
        std::fs::write(f.path(), b"{\"version\":1,\"tokens\":-5,\"last_refill\":\"2026-11-21T10:00:00Z\",\"day\":\"2026-11-21\",\"sent_today\":0}").unwrap();
        assert!(f.peek(&p, &z, t(10, 1, 0), || 0).rebuilt.is_some());
        // The rebuilt state is written back by the next update.
        let (_, warn) = f.update(&p, &z, t(10, 1, 0), || 17, |s| (s, ())).unwrap();
        assert!(warn.is_some());
        assert!(f.peek(&p, &z, t(10, 1, 0), || 17).rebuilt.is_none());
    }

    #[test]
    fn a_days_count_beyond_the_queues_is_recounted_from_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let f = BucketFile::new(&dir.path().join("send-bucket.json"));
        let p = Params::default();
        let z = berlin();
        std::fs::write(
            f.path(),
            br#"{"version":1,"tokens":20,"last_refill":"2026-11-21T10:00:00Z","day":"2026-11-21","sent_today":4294967295}"#,
        )
        .unwrap();
        let loaded = f.peek(&p, &z, t(10, 0, 0), || 3);
        assert_eq!(loaded.state.sent_today, 3);
        assert_eq!(loaded.state.daily_remaining(&p), 97);
        let warning = loaded.rebuilt.unwrap().to_string();
        assert!(
            warning.contains("4294967295") && warning.contains("queue shows 3"),
            "{warning}"
        );
        // Written back by the next update, after which it is believed again.
        let (_, warn) = f.update(&p, &z, t(10, 0, 0), || 3, |s| (s, ())).unwrap();
        assert!(warn.is_some());
        assert!(f.peek(&p, &z, t(10, 0, 0), || 3).rebuilt.is_none());
        // A drain holding a reservation counts sends the queue does not show yet.
        let (reserved, n) = State::full(&p, &z, t(10, 0, 0)).reserve(&p, &z, t(10, 0, 0), 5);
        assert_eq!(n, 5);
        std::fs::write(f.path(), serde_json::to_vec(&reserved).unwrap()).unwrap();
        let loaded = f.peek(&p, &z, t(10, 0, 0), || 0);
        assert!(loaded.rebuilt.is_none());
        assert_eq!(loaded.state.sent_today, 5);
        // Within the cap, a count above the queue's is believed (a mail retried by hand
        // was counted when first sent, and the queue no longer shows that send).
        let (mut within, _) = State::full(&p, &z, t(10, 0, 0)).reserve(&p, &z, t(10, 0, 0), 5);
        within.reserved = None;
        std::fs::write(f.path(), serde_json::to_vec(&within).unwrap()).unwrap();
        assert!(f.peek(&p, &z, t(10, 0, 0), || 2).rebuilt.is_none());
    }
}
