//! SQL of the outgoing mail queue (`mail_queue`, `mail_attachments`): enqueueing with
//! idempotency keys, reading, cancelling, reviving and purging.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, Tx};
use crate::mail::{BodyType, MailState, NewMail};

/// The outcome of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    /// A mail with the same idempotency key was already queued: nothing was added.
    pub duplicate: bool,
}

/// A queued mail as stored (its attachments by name, type and size).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueuedMail {
    pub id: i64,
    pub created_at: String,
    pub sender: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub body: String,
    pub body_type: BodyType,
    pub idempotency_key: Option<String>,
    pub state: MailState,
    pub attempts: i64,
    pub next_attempt_at: String,
    pub last_error: Option<String>,
    pub graph_message_id: Option<String>,
    pub internet_message_id: Option<String>,
    pub sent_at: Option<String>,
    /// When its send was last requested from Graph.
    pub send_requested_at: Option<String>,
    pub attachments: Vec<AttachmentInfo>,
    /// What is wrong with the stored row (a body that is not text, recipients that are
    /// not a list of addresses, a due time that is not a time): such a mail is never sent
    /// but failed with this reason, and the rest of the queue goes on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
}

/// An attempt to send a mail, as it begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Attempts made, this one included.
    pub attempts: i64,
    /// The mail's internetMessageId (its first, kept for good).
    pub internet_message_id: String,
    /// When a send of it was last requested, if one was: it may be on its way.
    pub send_requested_at: Option<String>,
}

/// The queue's mails by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    pub queued: u64,
    /// Queued and due now.
    pub due: u64,
    pub sending: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// An attachment's description (its bytes stay in the database).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttachmentInfo {
    pub name: String,
    pub content_type: String,
    pub size: i64,
}

fn list(v: &[String]) -> String {
    serde_json::to_string(v).expect("lists serialize")
}

/// Reads a stored row whatever its cells hold: what cannot be what it should be is
/// described in `damage` (and stands in as empty or lossy text), so one damaged row never
/// stops the queue or its listing.
struct Lenient<'r, 's> {
    row: &'r rusqlite::Row<'s>,
    damage: Vec<String>,
}

impl Lenient<'_, '_> {
    fn text(&mut self, i: usize, what: &str) -> rusqlite::Result<String> {
        Ok(self.opt_text(i, what)?.unwrap_or_else(|| {
            self.damage.push(format!("its {what} is missing"));
            String::new()
        }))
    }

    fn opt_text(&mut self, i: usize, what: &str) -> rusqlite::Result<Option<String>> {
        use rusqlite::types::ValueRef;
        Ok(match self.row.get_ref(i)? {
            ValueRef::Null => None,
            ValueRef::Text(b) => Some(match std::str::from_utf8(b) {
                Ok(s) => s.to_string(),
                Err(_) => {
                    self.damage.push(format!("its {what} is not valid UTF-8"));
                    String::from_utf8_lossy(b).into_owned()
                }
            }),
            ValueRef::Blob(b) => {
                self.damage.push(format!(
                    "its {what} is binary data ({} bytes), not text",
                    b.len()
                ));
                Some(String::new())
            }
            ValueRef::Integer(n) => {
                self.damage
                    .push(format!("its {what} is a number ({n}), not text"));
                Some(n.to_string())
            }
            ValueRef::Real(f) => {
                self.damage
                    .push(format!("its {what} is a number ({f}), not text"));
                Some(f.to_string())
            }
        })
    }

    fn addresses(&mut self, i: usize, what: &str) -> rusqlite::Result<Vec<String>> {
        let text = self.text(i, what)?;
        match serde_json::from_str::<Vec<String>>(&text) {
            Ok(v) => {
                if let Some(bad) = v.iter().find(|a| crate::mail::check_address(a).is_err()) {
                    let shown: String = bad.chars().take(40).collect();
                    self.damage
                        .push(format!("its {what} list holds `{shown}`, not an address"));
                }
                Ok(v)
            }
            Err(_) => {
                self.damage
                    .push(format!("its {what} list is not a list of addresses"));
                Ok(Vec::new())
            }
        }
    }

    fn integer(&mut self, i: usize, what: &str) -> rusqlite::Result<i64> {
        match self.row.get_ref(i)? {
            rusqlite::types::ValueRef::Integer(n) => Ok(n),
            _ => {
                self.damage.push(format!("its {what} is not a number"));
                Ok(0)
            }
        }
    }

    fn time(&mut self, i: usize, what: &str) -> rusqlite::Result<String> {
        let t = self.text(i, what)?;
        if crate::time::parse(&t).is_none() {
            let shown: String = t.chars().take(40).collect();
            self.damage
                .push(format!("its {what} `{shown}` is not a time"));
        }
        Ok(t)
    }
}

impl Tx<'_> {
    /// Queues `mail`, due at once. A mail whose idempotency key is already queued is not
    /// added again: the earlier one's id comes back, marked duplicate.
    pub fn enqueue(&mut self, mail: &NewMail, now: &str) -> Result<Enqueued, StoreError> {
        if let Some(key) = &mail.key {
            let existing: Option<i64> = self
                .tx
                .prepare_cached("SELECT id FROM mail_queue WHERE idempotency_key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?;
            if let Some(id) = existing {
                return Ok(Enqueued {
                    id,
                    duplicate: true,
                });
            }
        }
        let body_type = match mail.body_type {
            BodyType::Text => "text",
            BodyType::Html => "html",
        };
        let id: i64 = self
            .tx
            .prepare_cached(
                "INSERT INTO mail_queue (created_at, sender, to_addrs, cc_addrs, bcc_addrs, subject,
                     body, body_type, idempotency_key, state, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?1)
                 RETURNING id",
            )?
            .query_row(
                params![
                    now,
                    mail.sender,
                    list(&mail.to),
                    list(&mail.cc),
                    list(&mail.bcc),
                    mail.subject,
                    mail.body,
                    body_type,
                    mail.key
                ],
                |r| r.get(0),
            )?;
        let mut st = self.tx.prepare_cached(
            "INSERT INTO mail_attachments (mail_id, position, name, content_type, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (i, a) in mail.attachments.iter().enumerate() {
            st.execute(params![id, i as i64, a.name, a.content_type, a.bytes])?;
        }
        Ok(Enqueued {
            id,
            duplicate: false,
        })
    }

    /// A mail's state and when its send was last requested; `None` when there is no
    /// such mail. (Which states a person may cancel or retry is [`crate::mail::queue`]'s
    /// rule; it reads and writes in one transaction.)
    pub fn mail_state(&self, id: i64) -> Result<Option<(MailState, Option<String>)>, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT state, send_requested_at FROM mail_queue WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Marks a mail cancelled.
    pub fn mark_cancelled(&mut self, id: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE mail_queue SET state = 'cancelled' WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    /// Queues a mail again by a person's word, due at `now` with its attempts counted
    /// from zero and any earlier send request forgotten (the next attempt still looks it
    /// up in Sent Items first).
    pub fn revive(&mut self, id: i64, now: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE mail_queue SET state = 'queued', attempts = 0, next_attempt_at = ?2,
                     send_requested_at = NULL
                 WHERE id = ?1",
            )?
            .execute(params![id, now])?;
        Ok(())
    }

    /// Deletes sent mails (with their attachments) sent before `before`; returns how many.
    pub fn purge_sent(&mut self, before: &str) -> Result<u64, StoreError> {
        Ok(self
            .tx
            .prepare_cached("DELETE FROM mail_queue WHERE state = 'sent' AND sent_at < ?1")?
            .execute([before])? as u64)
    }

    /// Records that an attempt to send `id` begins: its internetMessageId (committed
    /// before any network call, so that a crash can always look the mail up; an id it
    /// already has is kept), its sender (one it already has is kept: a later change of
    /// `[mail] from` or of the signed-in account must not move a mail that may have
    /// gone) and one more attempt. A `queued` mail moves to `sending`; a
    /// mail already `sending` (a repeated attempt, or one a crash interrupted) stays.
    /// Returns the attempt as it begins; `None` when the mail is in no state to send
    /// (cancelled meanwhile).
    pub fn begin_attempt(
        &mut self,
        id: i64,
        internet_message_id: &str,
        sender: &str,
    ) -> Result<Option<Attempt>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "UPDATE mail_queue SET state = 'sending', attempts = attempts + 1,
                     internet_message_id = coalesce(internet_message_id, ?2),
                     sender = coalesce(sender, ?3)
                 WHERE id = ?1 AND state IN ('queued', 'sending')
                 RETURNING attempts, internet_message_id, send_requested_at",
            )?
            .query_row(params![id, internet_message_id, sender], |r| {
                Ok(Attempt {
                    attempts: r.get(0)?,
                    internet_message_id: r.get(1)?,
                    send_requested_at: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Records the draft a mail is sent from, and that its send is about to be requested
    /// at `now` (committed before the request: from then on the mail may be on its way).
    pub fn record_send(
        &mut self,
        id: i64,
        graph_message_id: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE mail_queue SET graph_message_id = ?2, send_requested_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id, graph_message_id, now])?;
        Ok(())
    }

    /// Marks a mail sent at `now`.
    pub fn mark_sent(&mut self, id: i64, now: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE mail_queue SET state = 'sent', sent_at = ?2, last_error = NULL WHERE id = ?1",
            )?
            .execute(params![id, now])?;
        Ok(())
    }

    /// Puts a mail back in the queue, due at `next_attempt_at`, with the error that
    /// stopped it. Its internetMessageId and draft stay, so the next attempt looks the
    /// mail up before sending anything.
    pub fn requeue(
        &mut self,
        id: i64,
        next_attempt_at: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE mail_queue SET state = 'queued', next_attempt_at = ?2, last_error = ?3
                 WHERE id = ?1",
            )?
            .execute(params![id, next_attempt_at, error])?;
        Ok(())
    }

    /// Marks a mail failed for good (until `queue retry`), keeping the error.
    pub fn mark_failed(&mut self, id: i64, error: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE mail_queue SET state = 'failed', last_error = ?2 WHERE id = ?1",
            )?
            .execute(params![id, error])?;
        Ok(())
    }
}

const COLUMNS: &str = "id, created_at, sender, to_addrs, cc_addrs, bcc_addrs, subject, body,
    body_type, idempotency_key, state, attempts, next_attempt_at, last_error,
    graph_message_id, internet_message_id, sent_at, send_requested_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedMail> {
    let mut l = Lenient {
        row: r,
        damage: Vec::new(),
    };
    let body_type = l.text(8, "body type")?;
    let mut mail = QueuedMail {
        id: r.get(0)?,
        created_at: l.text(1, "creation time")?,
        sender: l.opt_text(2, "sender")?,
        to: l.addresses(3, "To")?,
        cc: l.addresses(4, "Cc")?,
        bcc: l.addresses(5, "Bcc")?,
        subject: l.text(6, "subject")?,
        body: l.text(7, "body")?,
        body_type: match body_type.as_str() {
            "html" => BodyType::Html,
            "text" => BodyType::Text,
            other => {
                let shown: String = other.chars().take(20).collect();
                l.damage
                    .push(format!("its body type `{shown}` is neither text nor html"));
                BodyType::Text
            }
        },
        idempotency_key: l.opt_text(9, "idempotency key")?,
        // The schema's CHECK holds the state names: a value that is none of them (the
        // constraint bypassed) is an error naming it, not a damage the row can carry.
        state: r.get(10)?,
        attempts: l.integer(11, "attempt count")?,
        next_attempt_at: l.time(12, "due time")?,
        last_error: l.opt_text(13, "last error")?,
        graph_message_id: l.opt_text(14, "Graph message id")?,
        internet_message_id: l.opt_text(15, "internetMessageId")?,
        sent_at: l.opt_text(16, "sent time")?,
        send_requested_at: l.opt_text(17, "send request time")?,
        attachments: Vec::new(),
        damage: None,
    };
    if mail.to.is_empty() && mail.cc.is_empty() && mail.bcc.is_empty() {
        l.damage.push("it has no recipients".into());
    }
    if !l.damage.is_empty() {
        mail.damage = Some(format!(
            "the stored mail is damaged: {}",
            l.damage.join("; ")
        ));
    }
    Ok(mail)
}

impl Store {
    /// One mail with its attachments' descriptions.
    pub fn mail(&self, id: i64) -> Result<Option<QueuedMail>, StoreError> {
        let mut mail = match self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM mail_queue WHERE id = ?1"))?
            .query_row([id], row)
            .optional()?
        {
            Some(m) => m,
            None => return Ok(None),
        };
        let mut st = self.conn.prepare_cached(
            "SELECT name, content_type, length(bytes) FROM mail_attachments
             WHERE mail_id = ?1 ORDER BY position",
        )?;
        mail.attachments = st
            .query_map([id], |r| {
                Ok(AttachmentInfo {
                    name: r.get(0)?,
                    content_type: r.get(1)?,
                    size: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Some(mail))
    }

    /// Mails in creation order, optionally of one state, at most `limit`.
    pub fn mails(
        &self,
        state: Option<MailState>,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM mail_queue WHERE ?1 IS NULL OR state = ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = st.query_map(params![state, limit], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queued mails due at `now`, oldest first, at most `limit`; mails caught in
    /// `sending` (a crash mid-send) come first, since their outcome must be settled.
    /// `named_sender_only`: only mails that name their sender (there is no default).
    pub fn due_mails(
        &self,
        now: &str,
        limit: u32,
        named_sender_only: bool,
    ) -> Result<Vec<QueuedMail>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM mail_queue
             WHERE (state = 'sending' OR (state = 'queued' AND next_attempt_at <= ?1))
               AND (NOT ?3 OR sender IS NOT NULL)
             ORDER BY state = 'queued', id LIMIT ?2"
        ))?;
        let rows = st.query_map(params![now, limit, named_sender_only], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queued mails whose due time is not a time as the queue writes them (a damaged
    /// row): they would never come due, so the drain fails them instead. At most `limit`.
    pub fn mails_with_bad_due_times(&self, limit: u32) -> Result<Vec<QueuedMail>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM mail_queue
             WHERE state = 'queued'
               AND NOT (typeof(next_attempt_at) = 'text' AND length(next_attempt_at) = 24
                        AND next_attempt_at GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z')
             ORDER BY id LIMIT ?1"
        ))?;
        let rows = st.query_map([limit], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Due mails that name no sender.
    pub fn due_without_sender(&self, now: &str) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT count(*) FROM mail_queue
             WHERE (state = 'sending' OR (state = 'queued' AND next_attempt_at <= ?1))
               AND sender IS NULL",
                [now],
                |r| r.get::<_, i64>(0),
            )?
            .max(0) as u64)
    }

    /// A mail's attachments with their bytes, in order.
    pub fn mail_attachments(&self, id: i64) -> Result<Vec<crate::mail::Attachment>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT name, content_type, bytes FROM mail_attachments WHERE mail_id = ?1 ORDER BY position",
        )?;
        let rows = st.query_map([id], |r| {
            Ok(crate::mail::Attachment {
                name: r.get(0)?,
                content_type: r.get(1)?,
                bytes: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many mails are queued (and due at `now`), sending, failed and cancelled. Each
    /// figure is a range of the due index: sent mails, however many, are not read.
    pub fn queue_counts(&self, now: &str) -> Result<QueueCounts, StoreError> {
        let n = |v: i64| v.max(0) as u64;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT (SELECT count(*) FROM mail_queue WHERE state = 'queued'),
                        (SELECT count(*) FROM mail_queue WHERE state = 'queued' AND next_attempt_at <= ?1),
                        (SELECT count(*) FROM mail_queue WHERE state = 'sending'),
                        (SELECT count(*) FROM mail_queue WHERE state = 'failed'),
                        (SELECT count(*) FROM mail_queue WHERE state = 'cancelled')",
            )?
            .query_row([now], |r| {
                Ok(QueueCounts {
                    queued: n(r.get(0)?),
                    due: n(r.get(1)?),
                    sending: n(r.get(2)?),
                    failed: n(r.get(3)?),
                    cancelled: n(r.get(4)?),
                })
            })?)
    }

    /// When the next queued mail falls due, if any is queued.
    pub fn next_mail_due(&self) -> Result<Option<String>, StoreError> {
        Ok(self.conn.query_row(
            "SELECT min(next_attempt_at) FROM mail_queue WHERE state = 'queued'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Mails whose send was requested at or after `since`, confirmed or not (the day's
    /// send count as the queue tells it).
    pub fn sends_requested_since(&self, since: &str) -> Result<u32, StoreError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM mail_queue WHERE send_requested_at >= ?1",
            [since],
            |r| r.get(0),
        )?)
    }

    /// Mails sent at or after `since`.
    pub fn sent_since(&self, since: &str) -> Result<u32, StoreError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM mail_queue WHERE state = 'sent' AND sent_at >= ?1",
            [since],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::Attachment;
    use crate::time::stamp_millis as queue_time;

    fn mail(key: Option<&str>) -> NewMail {
        NewMail {
            sender: None,
            to: vec!["ada@contoso.com".into()],
            cc: vec![],
            bcc: vec!["audit@contoso.com".into()],
            subject: "Hold review".into(),
            body: "<p>see attached</p>".into(),
            body_type: BodyType::Html,
            attachments: vec![Attachment {
                name: "holds.csv".into(),
                content_type: "text/csv".into(),
                bytes: b"a,b\n".to_vec(),
            }],
            key: key.map(str::to_string),
        }
    }

    #[test]
    fn queue_times_sort_as_the_times_they_stand_for() {
        use chrono::TimeZone;
        let whole = chrono::Utc
            .with_ymd_and_hms(2026, 11, 21, 10, 0, 5)
            .unwrap();
        let later = whole + chrono::Duration::milliseconds(123);
        assert_eq!(queue_time(whole), "2026-11-21T10:00:05.000Z");
        assert!(queue_time(whole) < queue_time(later));
        // A mail queued on a whole second is due within that second.
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("q.db")).unwrap();
        store
            .write(|tx| tx.enqueue(&mail(None), &queue_time(whole)))
            .unwrap();
        assert_eq!(
            store
                .due_mails(&queue_time(later), 10, false)
                .unwrap()
                .len(),
            1
        );
        // Without a default sender, only mails that name theirs are taken.
        let named = NewMail {
            sender: Some("it-ops@contoso.com".into()),
            ..mail(None)
        };
        let id = store
            .write(|tx| tx.enqueue(&named, &queue_time(whole)))
            .unwrap()
            .id;
        let only = store.due_mails(&queue_time(later), 1, true).unwrap();
        assert_eq!(only.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
        assert_eq!(store.due_without_sender(&queue_time(later)).unwrap(), 1);
    }

    #[test]
    fn enqueue_is_idempotent_per_key_and_keeps_attachments() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("q.db")).unwrap();
        let now = "2026-11-21T10:00:00Z";
        let a = store
            .write(|tx| tx.enqueue(&mail(Some("k1")), now))
            .unwrap();
        let b = store
            .write(|tx| tx.enqueue(&mail(Some("k1")), now))
            .unwrap();
        let c = store.write(|tx| tx.enqueue(&mail(None), now)).unwrap();
        assert!(!a.duplicate && b.duplicate && !c.duplicate);
        assert_eq!(a.id, b.id);
        let m = store.mail(a.id).unwrap().unwrap();
        assert_eq!(m.state, MailState::Queued);
        assert_eq!(m.next_attempt_at, now);
        assert_eq!(m.bcc, vec!["audit@contoso.com"]);
        assert_eq!(m.body_type, BodyType::Html);
        assert_eq!(
            m.attachments,
            vec![AttachmentInfo {
                name: "holds.csv".into(),
                content_type: "text/csv".into(),
                size: 4
            }]
        );
        assert_eq!(store.mails(None, 10).unwrap().len(), 2);
        assert_eq!(store.mails(Some(MailState::Sent), 10).unwrap().len(), 0);
        assert_eq!(store.mail(99).unwrap(), None);
    }

    #[test]
    fn a_send_moves_queued_to_sending_to_sent_and_a_crash_leaves_it_findable() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("q.db")).unwrap();
        let t0 = "2026-11-21T10:00:00Z";
        let a = store.write(|tx| tx.enqueue(&mail(None), t0)).unwrap().id;
        let b = store.write(|tx| tx.enqueue(&mail(None), t0)).unwrap().id;
        let due = store.due_mails(t0, 10, false).unwrap();
        assert_eq!(due.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(
            store
                .write(|tx| tx.begin_attempt(b, "<b@contoso.com>", "adele@contoso.com"))
                .unwrap(),
            Some(Attempt {
                attempts: 1,
                internet_message_id: "<b@contoso.com>".into(),
                send_requested_at: None
            })
        );
        // The sender is fixed at the first attempt; a later one keeps it.
        assert_eq!(
            store.mail(b).unwrap().unwrap().sender.as_deref(),
            Some("adele@contoso.com")
        );
        // A mail caught sending (a crash) comes first, and keeps its internetMessageId.
        assert_eq!(
            store.queue_counts(t0).unwrap(),
            QueueCounts {
                queued: 1,
                due: 1,
                sending: 1,
                ..QueueCounts::default()
            }
        );
        assert_eq!(store.due_mails(t0, 1, false).unwrap()[0].id, b);
        store
            .write(|tx| tx.record_send(b, "draft-1", "2026-11-21T10:00:01Z"))
            .unwrap();
        let m = store.mail(b).unwrap().unwrap();
        assert_eq!(
            (
                m.state,
                m.attempts,
                m.internet_message_id.as_deref(),
                m.graph_message_id.as_deref()
            ),
            (
                MailState::Sending,
                1,
                Some("<b@contoso.com>"),
                Some("draft-1")
            )
        );
        // Back to the queue: later, with its id kept for the lookup; then sent.
        store
            .write(|tx| tx.requeue(b, "2026-11-21T10:05:00Z", "HTTP 504"))
            .unwrap();
        assert_eq!(
            store
                .due_mails(t0, 10, false)
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>(),
            vec![a]
        );
        assert_eq!(
            store
                .write(|tx| tx.begin_attempt(b, "<new@contoso.com>", "ben@contoso.com"))
                .unwrap(),
            Some(Attempt {
                attempts: 2,
                internet_message_id: "<b@contoso.com>".into(),
                send_requested_at: Some("2026-11-21T10:00:01Z".into())
            })
        );
        assert_eq!(
            store.mail(b).unwrap().unwrap().sender.as_deref(),
            Some("adele@contoso.com")
        );
        store
            .write(|tx| tx.mark_sent(b, "2026-11-21T10:06:00Z"))
            .unwrap();
        assert_eq!(store.sent_since(t0).unwrap(), 1);
        store
            .write(|tx| tx.mark_failed(a, "HTTP 400 ErrorInvalidRecipients: bad"))
            .unwrap();
        assert!(
            store
                .due_mails("2026-12-01T00:00:00Z", 10, false)
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.mail_attachments(a).unwrap()[0].bytes, b"a,b\n");
        // A failed mail is not attempted again until revived.
        assert_eq!(
            store
                .write(|tx| tx.begin_attempt(a, "<a@x>", "adele@contoso.com"))
                .unwrap(),
            None
        );
        assert_eq!(store.next_mail_due().unwrap(), None);
    }

    #[test]
    fn cancel_revive_and_purge_write_what_they_say() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("q.db")).unwrap();
        let now = "2026-11-21T10:00:00Z";
        let id = store.write(|tx| tx.enqueue(&mail(None), now)).unwrap().id;
        assert_eq!(
            store.write(|tx| tx.mail_state(id)).unwrap(),
            Some((MailState::Queued, None))
        );
        assert_eq!(store.write(|tx| tx.mail_state(42)).unwrap(), None);
        store.write(|tx| tx.mark_cancelled(id)).unwrap();
        assert_eq!(store.mail(id).unwrap().unwrap().state, MailState::Cancelled);
        // Revived: due at once, its attempts and its send request forgotten.
        store
            .write(|tx| {
                tx.revive(id, now)?;
                tx.begin_attempt(id, "<a@contoso.com>", "adele@contoso.com")?;
                tx.record_send(id, "draft-1", "2026-11-21T10:00:01Z")?;
                tx.mark_failed(id, "SendUnconfirmed")
            })
            .unwrap();
        assert_eq!(
            store.write(|tx| tx.mail_state(id)).unwrap(),
            Some((MailState::Failed, Some("2026-11-21T10:00:01Z".into())))
        );
        let later = "2026-11-21T11:00:00Z";
        store.write(|tx| tx.revive(id, later)).unwrap();
        let m = store.mail(id).unwrap().unwrap();
        assert_eq!(
            (
                m.state,
                m.attempts,
                m.next_attempt_at.as_str(),
                m.send_requested_at,
                m.internet_message_id.as_deref()
            ),
            (MailState::Queued, 0, later, None, Some("<a@contoso.com>"))
        );
        // Purge takes sent mails before the cut, and their attachments with them.
        store
            .write(|tx| {
                tx.tx.execute(
                    "UPDATE mail_queue SET state = 'sent', sent_at = '2026-10-01T00:00:00Z' WHERE id = ?1",
                    [id],
                )?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(store.sent_since("2026-10-01T00:00:00Z").unwrap(), 1);
        assert_eq!(
            store
                .write(|tx| tx.purge_sent("2026-09-01T00:00:00Z"))
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .write(|tx| tx.purge_sent("2026-11-01T00:00:00Z"))
                .unwrap(),
            1
        );
        let left: i64 = store
            .conn
            .query_row("SELECT count(*) FROM mail_attachments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
}
