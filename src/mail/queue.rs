//! What a person may do to the outgoing mail queue, and what each leaves in the audit
//! log: add mails (`send`), queue a failed or cancelled mail again (`queue retry`),
//! cancel one that has not started sending (`queue cancel`) and delete sent mails
//! (`queue purge`).
//!
//! Each operation reads, decides and writes in one transaction of the [`Store`] and
//! returns a typed outcome; a refusal carries the words that explain it. The command
//! line only prints the outcome and maps it to its exit code; the SQL is the store's.
//!
//! The rules:
//! - only a `queued` or `failed` mail is cancelled; a `cancelled` one already is; a
//!   `sending` one may be on its way and a `sent` one went;
//! - only a `failed` or `cancelled` mail is retried, and not while a send of it that got
//!   no answer may still arrive (within `[mail] confirm_within` of its request); a
//!   `queued` one already waits;
//! - a purge never deletes mails sent today (in `[schedule] timezone`): the day's send
//!   count is rebuilt from them when the send bucket's file is lost.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{MailState, NewMail};
use crate::audit::{AuditEvent, Operation};
use crate::config::Zone;
use crate::store::{Enqueued, Store, StoreError};
use crate::time::stamp_millis as queue_time;

/// Queues `mails` (all or none), due at once, with one `QUEUE_ADD` audit row; a mail
/// whose idempotency key is already queued is not added again. `batch`: they came as a
/// JSON Lines batch (the audit row says so). Returns each mail's outcome, in order.
pub fn enqueue(
    store: &mut Store,
    mails: &[NewMail],
    batch: bool,
    now: DateTime<Utc>,
) -> Result<Vec<Enqueued>, StoreError> {
    let at = queue_time(now);
    store.write(|tx| {
        let mut results = Vec::with_capacity(mails.len());
        for m in mails {
            results.push(tx.enqueue(m, &at)?);
        }
        let added: Vec<i64> = results
            .iter()
            .filter(|r| !r.duplicate)
            .map(|r| r.id)
            .collect();
        let mut details = json!({
            "added": added.len(),
            "duplicates": results.len() - added.len(),
            "first_id": added.first(),
            "last_id": added.last(),
            "batch": batch,
        });
        if let [one] = mails {
            details["to"] = json!(one.to);
            details["cc"] = json!(one.cc);
            details["bcc"] = json!(one.bcc);
            details["subject"] = json!(one.subject);
            details["sender"] = json!(one.sender);
        }
        tx.audit(&AuditEvent::new(Operation::QueueAdd).details(details), now)?;
        Ok(results)
    })
}

/// How a cancel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled, with a `QUEUE_CANCEL` audit row.
    Cancelled {
        /// `queued` or `failed`.
        was: MailState,
        /// When a send of it was last requested, if one was: it got no answer, so the
        /// mail may still arrive.
        send_requested_at: Option<String>,
    },
    /// It already was cancelled: nothing changed.
    AlreadyCancelled,
    /// There is no such mail.
    NotFound,
    /// It cannot be cancelled: nothing changed.
    Refused(CancelRefusal),
}

/// Why a mail cannot be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelRefusal {
    #[error(
        "mail {id} is being sent now and cannot be cancelled; `imm-daemon queue show {id}` tells how it ended"
    )]
    Sending { id: i64 },
    #[error("mail {id} is sent and cannot be cancelled")]
    Sent { id: i64 },
}

/// Cancels mail `id` if it has not started sending.
pub fn cancel(store: &mut Store, id: i64, now: DateTime<Utc>) -> Result<CancelOutcome, StoreError> {
    store.write(|tx| {
        let Some((state, send_requested_at)) = tx.mail_state(id)? else {
            return Ok(CancelOutcome::NotFound);
        };
        Ok(match state {
            MailState::Queued | MailState::Failed => {
                tx.mark_cancelled(id)?;
                tx.audit(
                    &AuditEvent::new(Operation::QueueCancel)
                        .details(json!({"queue_id": id, "was": state})),
                    now,
                )?;
                CancelOutcome::Cancelled {
                    was: state,
                    send_requested_at,
                }
            }
            MailState::Cancelled => CancelOutcome::AlreadyCancelled,
            MailState::Sending => CancelOutcome::Refused(CancelRefusal::Sending { id }),
            MailState::Sent => CancelOutcome::Refused(CancelRefusal::Sent { id }),
        })
    })
}

/// How a retry ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Queued again, due now, with a `QUEUE_RETRY` audit row.
    Requeued {
        /// `failed` or `cancelled`.
        was: MailState,
    },
    /// It already waits in the queue: nothing changed.
    AlreadyQueued,
    /// There is no such mail.
    NotFound,
    /// It cannot be retried (now): nothing changed.
    Refused(RetryRefusal),
}

/// Why a mail cannot be retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryRefusal {
    /// A send of it got no answer lately: it may still arrive, and a retry could send it
    /// twice.
    #[error(
        "mail {id} was sent at {requested} without an answer and may still arrive; if it is not in the sender's Sent Items by {settles_at}, `imm-daemon queue retry {id}` sends it again"
    )]
    MayStillArrive {
        id: i64,
        /// When its send was requested.
        requested: String,
        /// When it is no longer expected (empty if the request time is not a time).
        settles_at: String,
    },
    /// It is `sending` or `sent`.
    #[error("mail {id} is {state}; only failed or cancelled mails can be retried")]
    NotRetriable { id: i64, state: MailState },
}

/// Queues a failed or cancelled mail again, due at `now` with its attempts counted from
/// zero (the next attempt looks it up in Sent Items before sending anything). A mail
/// whose send was requested within `confirm_within` of `now` got no answer yet and is
/// left as it is.
pub fn retry(
    store: &mut Store,
    id: i64,
    now: DateTime<Utc>,
    confirm_within: Duration,
) -> Result<RetryOutcome, StoreError> {
    let window = chrono::Duration::from_std(confirm_within).unwrap_or_default();
    let settled_before = queue_time(now - window);
    store.write(|tx| {
        let Some((state, requested)) = tx.mail_state(id)? else {
            return Ok(RetryOutcome::NotFound);
        };
        Ok(match state {
            MailState::Failed | MailState::Cancelled => match requested {
                Some(r) if r >= settled_before => {
                    let settles_at = crate::time::parse(&r)
                        .map(|t| queue_time(t + window))
                        .unwrap_or_default();
                    RetryOutcome::Refused(RetryRefusal::MayStillArrive {
                        id,
                        requested: r,
                        settles_at,
                    })
                }
                requested => {
                    tx.revive(id, &queue_time(now))?;
                    tx.audit(
                        &AuditEvent::new(Operation::QueueRetry).details(json!({
                            "queue_id": id,
                            "was": state,
                            "send_requested_at": requested,
                        })),
                        now,
                    )?;
                    RetryOutcome::Requeued { was: state }
                }
            },
            MailState::Queued => RetryOutcome::AlreadyQueued,
            MailState::Sending | MailState::Sent => {
                RetryOutcome::Refused(RetryRefusal::NotRetriable { id, state })
            }
        })
    })
}

/// How a purge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeOutcome {
    /// `purged` sent mails sent before `sent_before` were deleted with their
    /// attachments, and a `QUEUE_PURGE` audit row says so (also when none was).
    Purged { purged: u64, sent_before: String },
    /// Nothing was read or deleted.
    Refused(PurgeRefusal),
}

/// Why a purge was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeRefusal {
    /// The duration goes back before the first representable time.
    #[error("the duration reaches too far back")]
    TooFarBack,
}

/// Deletes mails sent longer than `sent_older_than` before `now`, but none sent today
/// in `zone`, whatever the duration.
pub fn purge(
    store: &mut Store,
    sent_older_than: Duration,
    zone: &Zone,
    now: DateTime<Utc>,
) -> Result<PurgeOutcome, StoreError> {
    let Some(cutoff) = chrono::Duration::from_std(sent_older_than)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
    else {
        return Ok(PurgeOutcome::Refused(PurgeRefusal::TooFarBack));
    };
    let sent_before = queue_time(cutoff.min(zone.start_of_day(zone.date_of(now))));
    let purged = store.write(|tx| {
        let n = tx.purge_sent(&sent_before)?;
        tx.audit(
            &AuditEvent::new(Operation::QueuePurge)
                .details(json!({"purged": n, "sent_before": sent_before})),
            now,
        )?;
        Ok::<_, StoreError>(n)
    })?;
    Ok(PurgeOutcome::Purged {
        purged,
        sent_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::BodyType;
    use crate::store::AuditFilter;

    const NOW: &str = "2026-11-21T10:00:00Z";

    fn now() -> DateTime<Utc> {
        NOW.parse().unwrap()
    }

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    fn new_mail(subject: &str, key: Option<&str>) -> NewMail {
        NewMail {
            sender: None,
            to: vec!["ada@contoso.com".into()],
            cc: vec!["ben@contoso.com".into()],
            bcc: vec![],
            subject: subject.into(),
            body: "Please review the holds.".into(),
            body_type: BodyType::Text,
            attachments: vec![],
            key: key.map(str::to_string),
        }
    }

    /// A queue in a real database file.
    struct Queue {
        dir: tempfile::TempDir,
        store: Store,
    }

    impl Queue {
        fn new() -> Queue {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("q.db")).unwrap();
            Queue { dir, store }
        }

        /// A queued mail, brought to `state` as the drain would; `requested`: when its
        /// send was requested.
        fn mail_in(&mut self, state: MailState, requested: Option<&str>) -> i64 {
            self.store
                .write(|tx| {
                    let id = tx.enqueue(&new_mail("Hold review", None), NOW)?.id;
                    if state == MailState::Queued && requested.is_none() {
                        return Ok(id);
                    }
                    tx.begin_attempt(id, &format!("<{id}@contoso.com>"), "adele@contoso.com")?;
                    if let Some(r) = requested {
                        tx.record_send(id, "draft", r)?;
                    }
                    match state {
                        MailState::Queued => tx.requeue(id, NOW, "HTTP 503")?,
                        MailState::Sending => {}
                        MailState::Sent => tx.mark_sent(id, NOW)?,
                        MailState::Failed => tx.mark_failed(id, "HTTP 400")?,
                        MailState::Cancelled => tx.mark_cancelled(id)?,
                    }
                    Ok::<_, StoreError>(id)
                })
                .unwrap()
        }

        fn state(&self, id: i64) -> MailState {
            self.store.mail(id).unwrap().unwrap().state
        }

        /// The details of the audit rows of `op`, oldest first.
        fn audit(&self, op: Operation) -> Vec<serde_json::Value> {
            self.store
                .audit_rows(&AuditFilter {
                    operation: Some(op),
                    ..AuditFilter::default()
                })
                .unwrap()
                .iter()
                .map(|r| {
                    assert_eq!(r.result.as_deref(), Some("success"), "{r:?}");
                    serde_json::from_str(r.details.as_deref().unwrap()).unwrap()
                })
                .collect()
        }

        /// Every audit row's operation, oldest first.
        fn operations(&self) -> Vec<String> {
            self.store
                .audit_rows(&AuditFilter::default())
                .unwrap()
                .into_iter()
                .map(|r| r.operation)
                .collect()
        }
    }

    #[test]
    fn enqueue_adds_all_with_one_audit_row_and_a_key_once() {
        let mut q = Queue::new();
        let one = enqueue(
            &mut q.store,
            &[new_mail("Hold review", Some("k1"))],
            false,
            now(),
        )
        .unwrap();
        assert_eq!(
            one,
            vec![Enqueued {
                id: 1,
                duplicate: false
            }]
        );
        let batch = [
            new_mail("Again", Some("k1")),
            new_mail("Second", None),
            new_mail("Third", None),
        ];
        let more = enqueue(&mut q.store, &batch, true, now()).unwrap();
        assert_eq!(
            more.iter().map(|e| (e.id, e.duplicate)).collect::<Vec<_>>(),
            vec![(1, true), (2, false), (3, false)]
        );
        let m = q.store.mail(2).unwrap().unwrap();
        assert_eq!(
            (m.state, m.next_attempt_at.as_str()),
            (MailState::Queued, "2026-11-21T10:00:00.000Z")
        );
        // One mail names its recipients and subject; a batch only counts.
        assert_eq!(
            q.audit(Operation::QueueAdd),
            vec![
                json!({"added": 1, "duplicates": 0, "first_id": 1, "last_id": 1, "batch": false,
                       "to": ["ada@contoso.com"], "cc": ["ben@contoso.com"], "bcc": [],
                       "subject": "Hold review", "sender": null}),
                json!({"added": 2, "duplicates": 1, "first_id": 2, "last_id": 3, "batch": true}),
            ]
        );
        // A mail already queued: nothing added, still audited.
        let again = enqueue(
            &mut q.store,
            &[new_mail("Hold review", Some("k1"))],
            false,
            now(),
        )
        .unwrap();
        assert!(again[0].duplicate);
        assert_eq!(
            q.audit(Operation::QueueAdd)[2],
            json!({"added": 0, "duplicates": 1, "first_id": null, "last_id": null, "batch": false,
                   "to": ["ada@contoso.com"], "cc": ["ben@contoso.com"], "bcc": [],
                   "subject": "Hold review", "sender": null})
        );
    }

    #[test]
    fn cancel_takes_queued_and_failed_mails_only() {
        let mut q = Queue::new();
        let queued = q.mail_in(MailState::Queued, None);
        let failed = q.mail_in(MailState::Failed, Some("2026-11-21T09:00:00.000Z"));
        let cancelled = q.mail_in(MailState::Cancelled, None);
        let sending = q.mail_in(MailState::Sending, None);
        let sent = q.mail_in(MailState::Sent, None);
        let requeued = q.mail_in(MailState::Queued, Some("2026-11-21T09:00:00.000Z"));
        let base = q.operations().len();

        assert_eq!(
            cancel(&mut q.store, queued, now()).unwrap(),
            CancelOutcome::Cancelled {
                was: MailState::Queued,
                send_requested_at: None
            }
        );
        // A mail whose send got no answer is cancelled, and the caller is told it may
        // still arrive.
        assert_eq!(
            cancel(&mut q.store, failed, now()).unwrap(),
            CancelOutcome::Cancelled {
                was: MailState::Failed,
                send_requested_at: Some("2026-11-21T09:00:00.000Z".into())
            }
        );
        assert_eq!(
            cancel(&mut q.store, requeued, now()).unwrap(),
            CancelOutcome::Cancelled {
                was: MailState::Queued,
                send_requested_at: Some("2026-11-21T09:00:00.000Z".into())
            }
        );
        for id in [queued, failed, requeued] {
            assert_eq!(q.state(id), MailState::Cancelled);
        }
        assert_eq!(
            cancel(&mut q.store, cancelled, now()).unwrap(),
            CancelOutcome::AlreadyCancelled
        );
        assert_eq!(
            cancel(&mut q.store, queued, now()).unwrap(),
            CancelOutcome::AlreadyCancelled
        );
        let refused = cancel(&mut q.store, sending, now()).unwrap();
        assert_eq!(
            refused,
            CancelOutcome::Refused(CancelRefusal::Sending { id: sending })
        );
        let CancelOutcome::Refused(why) = refused else {
            unreachable!()
        };
        assert_eq!(
            why.to_string(),
            format!(
                "mail {sending} is being sent now and cannot be cancelled; `imm-daemon queue show {sending}` tells how it ended"
            )
        );
        let refused = cancel(&mut q.store, sent, now()).unwrap();
        let CancelOutcome::Refused(why) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(
            why.to_string(),
            format!("mail {sent} is sent and cannot be cancelled")
        );
        assert_eq!(
            (q.state(sending), q.state(sent)),
            (MailState::Sending, MailState::Sent)
        );
        assert_eq!(
            cancel(&mut q.store, 99, now()).unwrap(),
            CancelOutcome::NotFound
        );
        // One audit row per mail cancelled, none for the rest.
        assert_eq!(q.operations().len(), base + 3);
        assert_eq!(
            q.audit(Operation::QueueCancel),
            vec![
                json!({"queue_id": queued, "was": "queued"}),
                json!({"queue_id": failed, "was": "failed"}),
                json!({"queue_id": requeued, "was": "queued"}),
            ]
        );
    }

    #[test]
    fn retry_takes_failed_and_cancelled_mails_unless_they_may_still_arrive() {
        let mut q = Queue::new();
        let failed = q.mail_in(MailState::Failed, None);
        let cancelled = q.mail_in(MailState::Cancelled, None);
        // Requested an hour ago; within a day it may still arrive.
        let unanswered = q.mail_in(MailState::Failed, Some("2026-11-21T09:00:00.000Z"));
        let queued = q.mail_in(MailState::Queued, None);
        let sending = q.mail_in(MailState::Sending, None);
        let sent = q.mail_in(MailState::Sent, None);
        let day = Duration::from_secs(86_400);
        let base = q.operations().len();
        let later = at("2026-11-21T10:30:00Z");

        assert_eq!(
            retry(&mut q.store, failed, later, day).unwrap(),
            RetryOutcome::Requeued {
                was: MailState::Failed
            }
        );
        assert_eq!(
            retry(&mut q.store, cancelled, later, day).unwrap(),
            RetryOutcome::Requeued {
                was: MailState::Cancelled
            }
        );
        let m = q.store.mail(failed).unwrap().unwrap();
        assert_eq!(
            (m.state, m.attempts, m.next_attempt_at.as_str()),
            (MailState::Queued, 0, "2026-11-21T10:30:00.000Z")
        );
        assert_eq!(
            retry(&mut q.store, failed, later, day).unwrap(),
            RetryOutcome::AlreadyQueued
        );
        assert_eq!(
            retry(&mut q.store, queued, later, day).unwrap(),
            RetryOutcome::AlreadyQueued
        );
        let refused = retry(&mut q.store, unanswered, later, day).unwrap();
        assert_eq!(
            refused,
            RetryOutcome::Refused(RetryRefusal::MayStillArrive {
                id: unanswered,
                requested: "2026-11-21T09:00:00.000Z".into(),
                settles_at: "2026-11-22T09:00:00.000Z".into(),
            })
        );
        let RetryOutcome::Refused(why) = refused else {
            unreachable!()
        };
        assert_eq!(
            why.to_string(),
            format!(
                "mail {unanswered} was sent at 2026-11-21T09:00:00.000Z without an answer and may still arrive; if it is not in the sender's Sent Items by 2026-11-22T09:00:00.000Z, `imm-daemon queue retry {unanswered}` sends it again"
            )
        );
        assert_eq!(q.state(unanswered), MailState::Failed);
        for (id, state) in [(sending, MailState::Sending), (sent, MailState::Sent)] {
            let refused = retry(&mut q.store, id, later, day).unwrap();
            assert_eq!(
                refused,
                RetryOutcome::Refused(RetryRefusal::NotRetriable { id, state })
            );
            let RetryOutcome::Refused(why) = refused else {
                unreachable!()
            };
            assert_eq!(
                why.to_string(),
                format!("mail {id} is {state}; only failed or cancelled mails can be retried")
            );
            assert_eq!(q.state(id), state);
        }
        assert_eq!(
            retry(&mut q.store, 99, later, day).unwrap(),
            RetryOutcome::NotFound
        );
        // Past the window (at its very end it still may arrive), the unanswered mail is
        // retried and its send request forgotten.
        let settled = at("2026-11-22T09:00:00Z");
        assert!(matches!(
            retry(&mut q.store, unanswered, settled, day).unwrap(),
            RetryOutcome::Refused(RetryRefusal::MayStillArrive { .. })
        ));
        let past = at("2026-11-22T09:00:00.001Z");
        assert_eq!(
            retry(&mut q.store, unanswered, past, day).unwrap(),
            RetryOutcome::Requeued {
                was: MailState::Failed
            }
        );
        let m = q.store.mail(unanswered).unwrap().unwrap();
        assert_eq!(
            (m.state, m.send_requested_at, m.attempts),
            (MailState::Queued, None, 0)
        );
        // One audit row per mail queued again, none for the rest.
        assert_eq!(q.operations().len(), base + 3);
        assert_eq!(
            q.audit(Operation::QueueRetry),
            vec![
                json!({"queue_id": failed, "was": "failed", "send_requested_at": null}),
                json!({"queue_id": cancelled, "was": "cancelled", "send_requested_at": null}),
                json!({"queue_id": unanswered, "was": "failed",
                       "send_requested_at": "2026-11-21T09:00:00.000Z"}),
            ]
        );
    }

    #[test]
    fn purge_deletes_sent_mails_but_never_todays() {
        let mut q = Queue::new();
        let sent_at = |q: &mut Queue, t: &str| {
            let id = q.mail_in(MailState::Queued, None);
            q.store.write(|tx| tx.mark_sent(id, t)).unwrap();
            id
        };
        let old = sent_at(&mut q, "2026-10-01T08:00:00.000Z");
        let yesterday = sent_at(&mut q, "2026-11-20T08:00:00.000Z");
        // Before midnight in UTC, but today in Berlin.
        let today = sent_at(&mut q, "2026-11-20T23:30:00.000Z");
        let failed = q.mail_in(MailState::Failed, None);
        let berlin = Zone::parse("Europe/Berlin")
            .expect("the system's time zone database has Europe/Berlin");
        let month = Duration::from_secs(30 * 86_400);
        assert_eq!(
            purge(&mut q.store, month, &berlin, now()).unwrap(),
            PurgeOutcome::Purged {
                purged: 1,
                sent_before: "2026-10-22T10:00:00.000Z".into()
            }
        );
        // However short the duration, the cut is today's midnight.
        assert_eq!(
            purge(&mut q.store, Duration::ZERO, &berlin, now()).unwrap(),
            PurgeOutcome::Purged {
                purged: 1,
                sent_before: "2026-11-20T23:00:00.000Z".into()
            }
        );
        for id in [old, yesterday] {
            assert_eq!(q.store.mail(id).unwrap(), None);
        }
        for id in [today, failed] {
            assert!(q.store.mail(id).unwrap().is_some());
        }
        // A duration beyond any time is refused, with nothing read or written.
        let base = q.operations().len();
        for far in [Duration::MAX, Duration::from_secs(400_000 * 366 * 86_400)] {
            let refused = purge(&mut q.store, far, &berlin, now()).unwrap();
            assert_eq!(refused, PurgeOutcome::Refused(PurgeRefusal::TooFarBack));
            let PurgeOutcome::Refused(why) = refused else {
                unreachable!()
            };
            assert_eq!(why.to_string(), "the duration reaches too far back");
        }
        assert_eq!(q.operations().len(), base);
        assert_eq!(
            q.audit(Operation::QueuePurge),
            vec![
                json!({"purged": 1, "sent_before": "2026-10-22T10:00:00.000Z"}),
                json!({"purged": 1, "sent_before": "2026-11-20T23:00:00.000Z"}),
            ]
        );
    }

    #[test]
    fn a_stored_state_that_is_no_state_is_an_error_not_a_panic() {
        let mut q = Queue::new();
        let id = q.mail_in(MailState::Failed, None);
        let good = q.mail_in(MailState::Queued, None);
        // The schema's CHECK forbids it; another tool may have written it anyway.
        let raw = rusqlite::Connection::open(q.dir.path().join("q.db")).unwrap();
        raw.execute_batch("PRAGMA ignore_check_constraints = ON")
            .unwrap();
        raw.execute(
            "UPDATE mail_queue SET state = 'archived' WHERE id = ?1",
            [id],
        )
        .unwrap();
        drop(raw);
        let named = |e: StoreError| {
            let text = format!("{:#}", anyhow::Error::from(e));
            assert!(
                text.contains(
                    "`archived` is not a mail state (queued, sending, sent, failed or cancelled)"
                ),
                "{text}"
            );
        };
        named(q.store.mail(id).unwrap_err());
        named(q.store.mails(None, 10).unwrap_err());
        named(cancel(&mut q.store, id, now()).unwrap_err());
        named(retry(&mut q.store, id, now(), Duration::ZERO).unwrap_err());
        // The rest of the queue is read and worked as before.
        assert_eq!(
            q.store
                .mails(Some(MailState::Queued), 10)
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>(),
            vec![good]
        );
        assert_eq!(
            q.store.due_mails(NOW, 10, false).unwrap().len(),
            1,
            "the drain's reading"
        );
        assert_eq!(
            cancel(&mut q.store, good, now()).unwrap(),
            CancelOutcome::Cancelled {
                was: MailState::Queued,
                send_requested_at: None
            }
        );
    }
}
