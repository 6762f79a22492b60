//! The outbox: each cycle, due mails leave the queue through Microsoft Graph at the pace
//! the send bucket allows, and none is lost or sent twice.
//!
//! A mail moves `queued` → `sending` → `sent`, each step committed before the next
//! network call:
//! 1. the attempt begins: the mail's internetMessageId (generated once and kept) and its
//!    attempt count are committed;
//! 2. a mail attempted before is looked up first, in Sent Items, then in Drafts, by that
//!    id: a 429, a 5xx or a timeout never proves that a send did not happen;
//! 3. a draft carrying the internetMessageId is created, and its id committed;
//! 4. the draft's id and the time of the send request are committed, the draft is sent
//!    (202 Accepted), and the mail is marked sent together with its SEND_EMAIL audit row.
//!
//! A kill at any point leaves the mail `sending` with its internetMessageId; the next
//! drain takes such mails first and settles them by the lookup. A mail whose send was
//! requested and that is in neither Sent Items nor Drafts is in transit (Exchange files
//! sent mail through the Outbox, seconds to minutes): it is never sent again on that
//! evidence. It waits for Sent Items up to `confirm_within` after the request, and is then
//! failed for a person to check (`queue retry` sends it again, on their word).
//!
//! Pacing: the drain reserves one token and one of the day's sends for each due mail it
//! takes (oldest first, crash-interrupted ones before them), in one write of the bucket
//! file; a repeated attempt takes a token of its own. What was not used goes back at the
//! end: tokens of mails never attempted, and day's sends that certainly did not happen
//! (an ambiguous failure keeps its send counted). The reservation is marked in the
//! bucket file until it is given back; a drain that finds the mark left by a killed one
//! counts the day's sends from the queue instead (every mail whose send was requested
//! today), and the killed drain's unused tokens come back at the refill rate.
//!
//! Failures: 429, 503, 504, other 5xx and network failures are repeated after Graph's
//! Retry-After, else 1 s, 2 s, 4 s, up to `attempts_per_cycle` times; then the mail
//! returns to the queue with the next wait as its due time, until `max_attempts_total`
//! makes it failed. A Retry-After beyond `max_retry_wait` is not slept through: the mail
//! is rescheduled and the drain starts no further mail. A 401 costs one silent refresh
//! and one repeat. 400, 403 and 404 fail the mail at once with Graph's code and message.
//!
//! Only the process holding the daemon's instance lock drains (the daemon, or
//! `imm-daemon cycle` when no daemon runs), so two drains never race for a mail; a
//! `queue cancel` that lands meanwhile wins, since an attempt only begins on a mail that
//! is still queued or sending.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::graph::{Folder, GraphError, GraphMail, Message};
use crate::audit::{AuditEvent, Operation};
use crate::auth::{AuthError, Resource, Session};
use crate::config::Config;
use crate::config::Zone;
use crate::paths::Paths;
use crate::ratelimit::{BucketError, BucketFile, Params, State};
use crate::store::{QueuedMail, Store, StoreError};
use crate::time::stamp_millis as queue_time;

/// The longest a mail is put off for a Retry-After (a proxy could ask for years).
const MAX_RESCHEDULE: Duration = Duration::from_secs(24 * 3600);

/// The send bucket's state file in the data folder.
pub fn bucket_file(paths: &Paths) -> BucketFile {
    BucketFile::new(&paths.data_dir.join("send-bucket.json"))
}

/// How the outbox drains, from `[mail]`, `[schedule] timezone` and the Graph URL.
#[derive(Debug, Clone)]
pub struct Settings {
    pub params: Params,
    pub zone: Zone,
    pub attempts_per_cycle: u32,
    pub max_attempts_total: u32,
    pub max_retry_wait: Duration,
    pub max_in_flight: usize,
    /// How long a send whose answer was lost may take to show in Sent Items.
    pub confirm_within: Duration,
    /// The mailbox of mails that name none; `None`: the signed-in account.
    pub from: Option<String>,
    pub graph_url: String,
    pub bucket: BucketFile,
}

impl Settings {
    pub fn from_config(config: &Config, paths: &Paths) -> Settings {
        let m = &config.mail;
        Settings {
            params: params(config),
            zone: config.schedule.timezone.clone(),
            attempts_per_cycle: m.attempts_per_cycle.get(),
            max_attempts_total: m.max_attempts_total.get(),
            max_retry_wait: m.max_retry_wait.get(),
            max_in_flight: m.max_in_flight.get() as usize,
            confirm_within: m.confirm_within.get(),
            from: m.from.as_ref().map(|f| f.as_str().to_string()),
            graph_url: config.graph_url(),
            bucket: bucket_file(paths),
        }
    }

    /// Brings the bucket file up to `now` (a new day starts its count at zero) and
    /// writes it; returns the state and the warning if the file had to be rebuilt.
    pub fn roll(
        &self,
        store: &Store,
        now: DateTime<Utc>,
    ) -> Result<(State, Option<BucketError>), BucketError> {
        self.bucket.update(
            &self.params,
            &self.zone,
            now,
            || sent_today(Some(store), &self.zone, &self.params, now),
            |st| (st.clone(), st),
        )
    }

    /// The bucket's state at `now`, as `status` shows it (nothing is written).
    pub fn peek_bucket(
        &self,
        store: Option<&Store>,
        now: DateTime<Utc>,
    ) -> crate::ratelimit::Loaded {
        self.bucket.peek(&self.params, &self.zone, now, || {
            sent_today(store, &self.zone, &self.params, now)
        })
    }
}

/// The bucket's shape from `[mail]`.
pub fn params(config: &Config) -> Params {
    Params {
        capacity: config.mail.capacity.get(),
        refill_every: config.mail.refill_every.get(),
        daily_cap: config.mail.daily_cap.get(),
    }
}

/// The day's sends as the queue tells them (to rebuild a lost bucket file, or after an
/// interrupted drain): mails whose send was requested since local midnight, confirmed
/// or not; the whole cap when the queue cannot be read, so that a rebuild never allows
/// more.
fn sent_today(store: Option<&Store>, zone: &Zone, params: &Params, now: DateTime<Utc>) -> u32 {
    let since = queue_time(zone.start_of_day(zone.date_of(now)));
    store
        .and_then(|s| s.sends_requested_since(&since).ok())
        .unwrap_or(params.daily_cap)
}

/// The wait before the next attempt after `failures` failed ones in a row: Graph's
/// Retry-After when it gave one, else 1 s, 2 s, 4 s, … doubling up to 64 s.
pub fn retry_wait(failures: u32, retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or_else(|| Duration::from_secs(1 << failures.saturating_sub(1).min(6)))
}

/// Why a drain could not run.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// What one drain did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainReport {
    /// Mails handed to Graph by this drain.
    pub sent: u32,
    /// Mails found already sent by an earlier, interrupted attempt (not sent again).
    pub found_sent: u32,
    /// Mails back in the queue for a later cycle (throttled, failing, out of tokens).
    pub requeued: u32,
    /// Mails given up on (refused by Graph, or out of attempts).
    pub failed: u32,
    /// Due mails left waiting for tokens or the next day.
    pub waiting: u64,
    /// Why the drain stopped starting mails early, if it did.
    pub halted: Option<String>,
    /// The bucket after the drain.
    pub bucket: Option<State>,
    /// The bucket file was unreadable and rebuilt.
    pub rebuilt: Option<String>,
    /// Due mails that name no sender, left queued: the signed-in account has no address
    /// and `[mail] from` is not set.
    pub no_sender: u64,
}

impl DrainReport {
    /// One line for people.
    pub fn summary(&self, params: &Params) -> String {
        let mut s = format!("{} mail(s) sent", self.sent);
        if self.found_sent > 0 {
            s.push_str(&format!(", {} found already sent", self.found_sent));
        }
        if self.requeued > 0 {
            s.push_str(&format!(", {} back in the queue", self.requeued));
        }
        if self.failed > 0 {
            s.push_str(&format!(
                ", {} FAILED (see `imm-daemon queue list`)",
                self.failed
            ));
        }
        if self.waiting > 0 {
            s.push_str(&format!(", {} wait", self.waiting));
            if let Some(b) = &self.bucket {
                if b.daily_remaining(params) == 0 {
                    s.push_str(" for tomorrow (daily cap reached)");
                } else if let Some(t) = b.next_token_at(params) {
                    s.push_str(&format!(" for tokens (next at {})", queue_time(t)));
                }
            }
        }
        if let Some(h) = &self.halted {
            s.push_str(&format!("; stopped early: {h}"));
        }
        if self.no_sender > 0 {
            s.push_str(&format!(
                "; {} name no sender and the signed-in account has no address: set [mail] from",
                self.no_sender
            ));
        }
        s
    }
}

/// How one mail's turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    FoundSent,
    Requeued,
    Failed,
    /// Not attempted: the drain stopped first, or the mail was cancelled meanwhile.
    NotStarted,
}

/// A mail's turn: its outcome, and whether a send of it may have happened without a
/// confirmation (its day's send then stays counted).
struct Turn {
    outcome: Outcome,
    maybe_sent: bool,
}

impl Turn {
    fn of(outcome: Outcome) -> Turn {
        Turn {
            outcome,
            maybe_sent: false,
        }
    }
}

/// A failed attempt.
enum Failure {
    /// Graph answered with a failure (or did not answer); `at_send`: it was the send
    /// itself, so the mail may have gone.
    Graph {
        err: GraphError,
        at_send: bool,
    },
    /// No usable access token.
    Auth(AuthError),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Store(e)
    }
}

/// A settled attempt.
enum Settled {
    Sent,
    FoundSent,
    /// In neither Sent Items nor Drafts after a send was requested at this time: it may
    /// still be on its way (Exchange's Outbox), so it must not be sent again.
    InTransit(DateTime<Utc>),
}

/// A new client-request-id (a random UUID), which Graph echoes and Microsoft support
/// asks for.
fn request_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

/// One drain of the queue.
struct Drain<'a> {
    settings: &'a Settings,
    graph: GraphMail,
    session: &'a Session,
    store: &'a RefCell<Store>,
    cancel: &'a CancellationToken,
    default_sender: Option<String>,
    halted: RefCell<Option<String>>,
}

/// Fails the damaged mails among `mails` (never sent: a damaged row could go out with
/// the wrong recipients or none), each with its reason and a SEND_FAILED row; returns how
/// many.
fn fail_damaged(store: &RefCell<Store>, mails: &[QueuedMail]) -> Result<u32, OutboxError> {
    let mut n = 0;
    for mail in mails {
        let Some(why) = &mail.damage else { continue };
        tracing::error!(queue_id = mail.id, "{why}; the mail is failed, not sent");
        store.borrow_mut().write(|tx| {
            tx.mark_failed(mail.id, why)?;
            tx.audit(
                &AuditEvent::new(Operation::SendFailed)
                    .identity(mail.sender.clone().unwrap_or_default())
                    .details(serde_json::json!({"queue_id": mail.id, "damaged": true}))
                    .failed(why.clone()),
                Utc::now(),
            )?;
            Ok::<_, StoreError>(())
        })?;
        n += 1;
    }
    Ok(n)
}

/// Sends what is due now, within the bucket; see the module's documentation.
pub async fn drain(
    settings: &Settings,
    session: &Session,
    store: &RefCell<Store>,
    cancel: &CancellationToken,
) -> Result<DrainReport, OutboxError> {
    let now = Utc::now();
    let s = settings;
    let mut report = DrainReport::default();
    // Rows damaged on disk are failed with their reason; the rest of the queue goes on.
    let bad_times = store.borrow().mails_with_bad_due_times(1_000)?;
    report.failed += fail_damaged(store, &bad_times)?;
    let counts = store.borrow().queue_counts(&queue_time(now))?;
    if counts.due + counts.sending == 0 {
        return Ok(report);
    }
    // A usable token first: without a sign-in nothing is reserved or begun.
    session.access_token(Resource::Graph, now).await?;
    let default_sender = match &s.from {
        Some(f) => Some(f.clone()),
        None => session
            .record()
            .await
            .and_then(|r| r.account.and_then(|a| a.username)),
    };
    // Without a default sender, mails that name none wait (and say so); the others go on.
    if default_sender.is_none() {
        report.no_sender = store.borrow().due_without_sender(&queue_time(now))?;
    }
    let due = store.borrow().due_mails(
        &queue_time(now),
        s.params.capacity,
        default_sender.is_none(),
    )?;
    report.failed += fail_damaged(store, &due)?;
    let due: Vec<QueuedMail> = due.into_iter().filter(|m| m.damage.is_none()).collect();
    if due.is_empty() {
        return Ok(report);
    }
    let ((state, reserved, interrupted), rebuilt) = s.bucket.update(
        &s.params,
        &s.zone,
        now,
        || sent_today(Some(&store.borrow()), &s.zone, &s.params, now),
        |mut st| {
            // A reservation never given back: the drain that made it was killed. What it
            // sent is in the queue, so the day's count is taken from there.
            let interrupted = st.reserved.take().is_some();
            if interrupted {
                st.sent_today = sent_today(Some(&store.borrow()), &s.zone, &s.params, now);
            }
            let (after, n) = st.reserve(&s.params, &s.zone, now, due.len() as u32);
            (after.clone(), (after, n, interrupted))
        },
    )?;
    // Nothing below returns before the reservation's unused part is given back.
    let mut first_error: Option<OutboxError> = None;
    if interrupted {
        tracing::warn!(
            sent_today = state.sent_today,
            "the last drain was interrupted; the day's sends are counted from the queue"
        );
    }
    if let Some(w) = rebuilt {
        let why = crate::error::chain(&w);
        tracing::warn!(
            "{why}; rebuilt conservatively (no tokens now, the day's sends counted from the queue)"
        );
        if let Err(e) = store.borrow_mut().audit(
            &AuditEvent::new(Operation::Error)
                .details(serde_json::json!({"what": "send_bucket_rebuilt", "sent_today": state.sent_today}))
                .failed(why.clone()),
            Utc::now(),
        ) {
            first_error = Some(e.into());
        }
        report.rebuilt = Some(why);
    }
    let day = state.day;
    report.waiting = (counts.due + counts.sending)
        .saturating_sub(u64::from(reserved))
        .saturating_sub(report.no_sender);
    let d = Drain {
        settings: s,
        graph: GraphMail::new(session.http().clone(), &s.graph_url),
        session,
        store,
        cancel,
        default_sender,
        halted: RefCell::new(None),
    };
    let mut gates: HashMap<String, Rc<Semaphore>> = HashMap::new();
    let turns = futures_util::future::join_all(due.iter().take(reserved as usize).map(|m| {
        let sender = d.sender_of(m);
        let gate = gates
            .entry(sender.to_lowercase())
            .or_insert_with(|| Rc::new(Semaphore::new(s.max_in_flight)))
            .clone();
        let d = &d;
        async move {
            let _permit = gate.acquire().await.expect("gates are never closed");
            d.turn(m, &sender).await
        }
    }))
    .await;
    let mut unused_tokens = 0;
    let mut unused_sends = 0;
    for turn in turns {
        let turn = match turn {
            Ok(t) => t,
            Err(e) => {
                // The mail's state is whatever was committed; a `sending` one is settled
                // by a lookup next time. Its day's send stays counted.
                first_error.get_or_insert(e);
                continue;
            }
        };
        match turn.outcome {
            Outcome::Sent => report.sent += 1,
            Outcome::FoundSent => report.found_sent += 1,
            Outcome::Requeued => report.requeued += 1,
            Outcome::Failed => report.failed += 1,
            Outcome::NotStarted => {
                unused_tokens += 1;
                report.waiting += 1;
            }
        }
        if turn.outcome != Outcome::Sent && !turn.maybe_sent {
            unused_sends += 1;
        }
    }
    let (after, _) = s.bucket.update(
        &s.params,
        &s.zone,
        Utc::now(),
        || sent_today(Some(&store.borrow()), &s.zone, &s.params, Utc::now()),
        |st| {
            let after = st.give_back(
                &s.params,
                &s.zone,
                Utc::now(),
                day,
                unused_tokens,
                unused_sends,
            );
            (after.clone(), after)
        },
    )?;
    report.bucket = Some(after);
    report.halted = d.halted.into_inner();
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

impl Drain<'_> {
    fn sender_of(&self, mail: &QueuedMail) -> String {
        mail.sender
            .clone()
            .or_else(|| self.default_sender.clone())
            .unwrap_or_default()
    }

    fn halt(&self, why: String) {
        self.halted.borrow_mut().get_or_insert(why);
    }

    /// One mail's turn: up to `attempts_per_cycle` attempts.
    async fn turn(&self, mail: &QueuedMail, sender: &str) -> Result<Turn, OutboxError> {
        let s = self.settings;
        // A send of this mail was requested in this turn without a confirmed outcome: its
        // day's send stays counted.
        let mut issued = false;
        // The last failure and the wait it asked for, for a mail put back mid-turn.
        let mut last_failure: Option<(String, Duration)> = None;
        // When this turn requested a send that got no answer.
        let mut requested_here: Option<DateTime<Utc>> = None;
        let requeued = |issued| Turn {
            outcome: Outcome::Requeued,
            maybe_sent: issued,
        };
        for attempt in 1..=s.attempts_per_cycle {
            if self.cancel.is_cancelled() || self.halted.borrow().is_some() {
                let Some((text, _)) = &last_failure else {
                    return Ok(Turn::of(Outcome::NotStarted));
                };
                // Stopped between attempts, after the wait Graph asked for: back to the
                // queue, due now.
                self.requeue(mail.id, Utc::now(), text)?;
                return Ok(requeued(issued));
            }
            if attempt > 1 && !self.take_token()? {
                // No token for a repeat: the mail waits for the next cycle.
                let wait = last_failure.as_ref().map_or(Duration::ZERO, |f| f.1);
                self.requeue(
                    mail.id,
                    Utc::now() + wait,
                    "no send token left for a repeat in this cycle",
                )?;
                return Ok(requeued(issued));
            }
            let fresh_id = super::graph::new_internet_message_id(sender);
            let begun = self
                .store
                .borrow_mut()
                .write(|tx| tx.begin_attempt(mail.id, &fresh_id, sender))?;
            let Some(crate::store::Attempt {
                attempts,
                internet_message_id: imid,
                send_requested_at,
            }) = begun
            else {
                // Cancelled since the drain listed it.
                return Ok(if last_failure.is_none() {
                    Turn::of(Outcome::NotStarted)
                } else {
                    requeued(issued)
                });
            };
            // A mail that had its id before this attempt is looked up before anything is
            // sent: an earlier attempt (a crash, a lost answer, a retry after either) may
            // have sent it or left its draft.
            let known = imid != fresh_id;
            let requested = send_requested_at.as_deref().and_then(crate::time::parse);
            let err = match self.attempt(mail, sender, &imid, known, requested).await {
                Ok(Settled::Sent) => return Ok(Turn::of(Outcome::Sent)),
                Ok(Settled::FoundSent) => {
                    return Ok(Turn {
                        outcome: Outcome::FoundSent,
                        maybe_sent: issued,
                    });
                }
                Ok(Settled::InTransit(at)) => {
                    let outcome = self.in_transit(mail, sender, attempts, at, None)?;
                    return Ok(Turn {
                        outcome,
                        maybe_sent: issued,
                    });
                }
                Err(Failure::Store(e)) => return Err(e.into()),
                Err(Failure::Auth(e)) => {
                    let why = format!("no access token for Graph: {}", crate::error::chain(&e));
                    self.requeue(mail.id, Utc::now(), &why)?;
                    self.halt(why);
                    return Ok(requeued(issued));
                }
                Err(Failure::Graph { err, at_send }) => {
                    if at_send {
                        issued = true;
                        requested_here = Some(Utc::now());
                    }
                    err
                }
            };
            let text = err.to_string();
            // Its send was requested, in this turn or before, and never confirmed.
            let sent_at = requested_here.or(requested);
            if err.kind == crate::error::Kind::SignIn {
                // Refused even after a refresh: the sign-in's permissions, or a
                // Conditional Access policy. Every other mail would meet the same.
                self.requeue(mail.id, Utc::now(), &text)?;
                self.halt(format!(
                    "Graph refuses the signed-in account's token: {text}"
                ));
                return Ok(requeued(issued));
            }
            if err.kind == crate::error::Kind::Refused {
                let outcome = self.give_up(mail, sender, attempts, sent_at, &err)?;
                return Ok(Turn {
                    outcome,
                    maybe_sent: issued,
                });
            }
            let wait = retry_wait(attempt, err.retry_after).min(MAX_RESCHEDULE);
            let status = err.status.map_or("network".to_string(), |c| c.to_string());
            tracing::warn!(
                mail = mail.id,
                attempt,
                attempts_total = attempts,
                status = %status,
                wait_ms = wait.as_millis() as u64,
                error = %text,
                "send attempt failed"
            );
            let too_long = wait > s.max_retry_wait;
            self.store.borrow_mut().audit(
                &AuditEvent::new(Operation::RateLimited)
                    .identity(sender.to_string())
                    .details(serde_json::json!({
                        "queue_id": mail.id,
                        "attempt": attempt,
                        "attempts_total": attempts,
                        "status": err.status,
                        "code": err.code,
                        "wait_ms": wait.as_millis() as u64,
                        "retry_after_ms": err.retry_after.map(|r| r.as_millis() as u64),
                    }))
                    .failed(text.clone()),
                Utc::now(),
            )?;
            if attempts >= i64::from(s.max_attempts_total) {
                let outcome = self.give_up(mail, sender, attempts, sent_at, &err)?;
                return Ok(Turn {
                    outcome,
                    maybe_sent: issued,
                });
            }
            if too_long || attempt == s.attempts_per_cycle || self.cancel.is_cancelled() {
                self.requeue(mail.id, Utc::now() + wait, &text)?;
                if too_long {
                    self.halt(format!(
                        "Graph asked to wait {} (more than max_retry_wait, {})",
                        humantime::format_duration(wait),
                        humantime::format_duration(s.max_retry_wait)
                    ));
                }
                return Ok(requeued(issued));
            }
            last_failure = Some((text.clone(), wait));
            let started = Utc::now();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.cancel.cancelled() => {
                    self.requeue(mail.id, started + wait, &text)?;
                    return Ok(requeued(issued));
                }
            }
        }
        unreachable!("the last attempt always returns")
    }

    /// Gives up on a mail after `err`: failed at once, unless a send of it was requested
    /// at `sent_at` without an answer; then it may have gone, and it waits for Sent Items
    /// as any mail in transit does before a person is asked to look.
    fn give_up(
        &self,
        mail: &QueuedMail,
        sender: &str,
        attempts: i64,
        sent_at: Option<DateTime<Utc>>,
        err: &GraphError,
    ) -> Result<Outcome, StoreError> {
        match sent_at {
            Some(at) => self.in_transit(mail, sender, attempts, at, Some(&err.to_string())),
            None => {
                self.fail(mail, sender, attempts, err)?;
                Ok(Outcome::Failed)
            }
        }
    }

    /// A mail whose send was requested at `requested` without an answer, and which is in
    /// neither Sent Items nor Drafts: it waits for Sent Items until `confirm_within` has
    /// passed, then it is failed for a person to check. It is never sent again blind.
    fn in_transit(
        &self,
        mail: &QueuedMail,
        sender: &str,
        attempts: i64,
        requested: DateTime<Utc>,
        last_error: Option<&str>,
    ) -> Result<Outcome, StoreError> {
        let s = self.settings;
        let now = Utc::now();
        let deadline = requested + chrono::Duration::from_std(s.confirm_within).unwrap_or_default();
        let also = last_error
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        if now >= deadline {
            let detail = format!(
                "it has not been found in Sent Items within {} of the request{also}",
                humantime::format_duration(s.confirm_within)
            );
            self.unconfirmed(mail, sender, attempts, requested, &detail)?;
            return Ok(Outcome::Failed);
        }
        let next = deadline.min(now + chrono::Duration::seconds(60));
        tracing::info!(mail = mail.id, next = %queue_time(next), "sent without an answer and not yet in Sent Items; looking again later");
        self.requeue(
            mail.id,
            next,
            &format!(
                "sent at {} without an answer; not yet in Sent Items (looking again until {}){also}",
                queue_time(requested),
                queue_time(deadline)
            ),
        )?;
        Ok(Outcome::Requeued)
    }

    /// Fails a mail that may have been sent (its send was requested, no answer came, and
    /// it cannot be found): a person must check the sender's Sent Items first.
    fn unconfirmed(
        &self,
        mail: &QueuedMail,
        sender: &str,
        attempts: i64,
        requested: DateTime<Utc>,
        detail: &str,
    ) -> Result<(), StoreError> {
        let err = GraphError {
            what: "confirming the send",
            kind: crate::error::Kind::Refused,
            status: None,
            code: Some("SendUnconfirmed".into()),
            message: format!(
                "the send requested at {} may have gone ({detail}): check {sender}'s Sent Items, then `imm-daemon queue retry {}` to send it again (it is looked up first) or `imm-daemon queue cancel {}`",
                queue_time(requested),
                mail.id,
                mail.id
            ),
            retry_after: None,
        };
        self.fail(mail, sender, attempts, &err)
    }

    /// Takes a token for a repeated attempt; false when the bucket has none.
    fn take_token(&self) -> Result<bool, OutboxError> {
        let s = self.settings;
        let now = Utc::now();
        let (took, _) = s.bucket.update(
            &s.params,
            &s.zone,
            now,
            || sent_today(Some(&self.store.borrow()), &s.zone, &s.params, now),
            |st| match st.take_token(&s.params, &s.zone, now) {
                Some(after) => (after, true),
                None => (st, false),
            },
        )?;
        Ok(took)
    }

    fn requeue(&self, id: i64, at: DateTime<Utc>, why: &str) -> Result<(), StoreError> {
        self.store
            .borrow_mut()
            .write(|tx| tx.requeue(id, &queue_time(at), why))
    }

    fn fail(
        &self,
        mail: &QueuedMail,
        sender: &str,
        attempts: i64,
        err: &GraphError,
    ) -> Result<(), StoreError> {
        let text = err.to_string();
        tracing::error!(mail = mail.id, error = %text, "mail failed");
        self.store.borrow_mut().write(|tx| {
            tx.mark_failed(mail.id, &text)?;
            tx.audit(
                &AuditEvent::new(Operation::SendFailed)
                    .identity(sender.to_string())
                    .details(serde_json::json!({
                        "queue_id": mail.id,
                        "attempts": attempts,
                        "status": err.status,
                        "code": err.code,
                        "subject": mail.subject,
                    }))
                    .failed(text.clone()),
                Utc::now(),
            )?;
            Ok(())
        })
    }

    /// A Graph call with a fresh token; a 401 costs one silent refresh and one repeat.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Failure>
    where
        F: Fn(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<T, GraphError>>,
    {
        let token = self
            .session
            .access_token(Resource::Graph, Utc::now())
            .await
            .map_err(Failure::Auth)?
            .token;
        match f(token.clone()).await {
            Err(e) if e.kind == crate::error::Kind::SignIn => {
                // One silent refresh; requests refused with the same token meanwhile
                // take the one it brought.
                tracing::info!("Graph refused the access token (401); renewing it once");
                let token = self
                    .session
                    .renew(Resource::Graph, &token, Utc::now())
                    .await
                    .map_err(Failure::Auth)?
                    .token;
                f(token).await.map_err(|err| Failure::Graph {
                    err,
                    at_send: false,
                })
            }
            other => other.map_err(|err| Failure::Graph {
                err,
                at_send: false,
            }),
        }
    }

    /// One attempt: look up (when asked), create the draft unless found, send it. A mail
    /// whose send was requested before (`requested`) and that is found nowhere is in
    /// transit, not lost.
    async fn attempt(
        &self,
        mail: &QueuedMail,
        sender: &str,
        imid: &str,
        look_up: bool,
        requested: Option<DateTime<Utc>>,
    ) -> Result<Settled, Failure> {
        let g = &self.graph;
        let mut draft = None;
        if look_up {
            let found = self
                .call(|t| async move {
                    g.find(&t, sender, Folder::SentItems, imid, &request_id())
                        .await
                })
                .await?;
            if found.is_some() {
                tracing::info!(
                    mail = mail.id,
                    "found already sent by an earlier attempt; not sending it again"
                );
                self.mark_sent(mail, sender, imid, true)?;
                return Ok(Settled::FoundSent);
            }
            draft = self
                .call(|t| async move {
                    g.find(&t, sender, Folder::Drafts, imid, &request_id())
                        .await
                })
                .await?;
        }
        let found_draft = draft.is_some();
        let draft = match (draft, requested) {
            (Some(id), _) => id,
            (None, Some(at)) => return Ok(Settled::InTransit(at)),
            (None, None) => {
                let files = self.store.borrow().mail_attachments(mail.id)?;
                let message = Message {
                    subject: &mail.subject,
                    body: &mail.body,
                    body_type: mail.body_type,
                    to: &mail.to,
                    cc: &mail.cc,
                    bcc: &mail.bcc,
                    attachments: &files,
                    internet_message_id: imid,
                };
                let message = &message;
                self.call(
                    |t| async move { g.create_draft(&t, sender, message, &request_id()).await },
                )
                .await?
            }
        };
        // From this commit on, the mail may be on its way.
        self.store
            .borrow_mut()
            .write(|tx| tx.record_send(mail.id, &draft, &queue_time(Utc::now())))?;
        let draft = draft.as_str();
        match self
            .call(|t| async move { g.send_draft(&t, sender, draft, &request_id()).await })
            .await
        {
            Ok(()) => {}
            // A draft found again that is gone when sent: Exchange was submitting it
            // (it leaves Drafts then), so it is on its way.
            // Seen leaving Drafts now: the wait for Sent Items starts now.
            Err(Failure::Graph { err, .. }) if found_draft && err.status == Some(404) => {
                return Ok(Settled::InTransit(Utc::now()));
            }
            Err(Failure::Graph { err, .. }) => return Err(Failure::Graph { err, at_send: true }),
            Err(other) => return Err(other),
        }
        self.mark_sent(mail, sender, imid, false)?;
        Ok(Settled::Sent)
    }

    fn mark_sent(
        &self,
        mail: &QueuedMail,
        sender: &str,
        imid: &str,
        found: bool,
    ) -> Result<(), StoreError> {
        record_sent(
            &mut self.store.borrow_mut(),
            mail,
            sender,
            imid,
            found,
            Utc::now(),
        )
    }
}

/// Marks `mail` sent at `now` with its SEND_EMAIL audit row (queue id, sender,
/// recipients, subject, internetMessageId; never the body), in one transaction.
/// `found`: an earlier attempt had sent it, a lookup found it.
pub fn record_sent(
    store: &mut Store,
    mail: &QueuedMail,
    sender: &str,
    imid: &str,
    found: bool,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    store.write(|tx| {
        tx.mark_sent(mail.id, &queue_time(now))?;
        tx.audit(
            &AuditEvent::new(Operation::SendEmail)
                .identity(sender.to_string())
                .details(serde_json::json!({
                    "queue_id": mail.id,
                    "sender": sender,
                    "to": mail.to,
                    "cc": mail.cc,
                    "bcc": mail.bcc,
                    "subject": mail.subject,
                    "internet_message_id": imid,
                    "found_sent": found,
                })),
            now,
        )?;
        Ok(())
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn retry_waits_follow_retry_after_else_double_from_one_second() {
        let s = Duration::from_secs;
        assert_eq!(retry_wait(1, None), s(1));
        assert_eq!(retry_wait(2, None), s(2));
        assert_eq!(retry_wait(3, None), s(4));
        assert_eq!(retry_wait(30, None), s(64));
        assert_eq!(
            retry_wait(1, Some(Duration::from_millis(2128))),
            Duration::from_millis(2128)
        );
    }
}
