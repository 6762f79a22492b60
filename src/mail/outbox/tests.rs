//! The drain against the emulated identity provider and Graph on loopback, with a real
//! session (device-code sign-in, the encrypted token file) and a real SQLite queue.

use std::cell::RefCell;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::auth::Session;
use crate::config::Config;
use crate::mail::queue::{RetryOutcome, RetryRefusal};
use crate::mail::{BodyType, MailState, NewMail};
use crate::paths::Paths;
use crate::store::{AuditFilter, Store};
use imm_emulators::identity::{IdentityOptions, IdentityProvider, TEST_CLIENT_ID};
use imm_emulators::{Endpoint, GraphFailure, GraphOptions, GraphServer};

const ME: &str = "adele.vance@contoso.onmicrosoft.com";

/// A signed-in home: the provider, Graph (checking tokens), the store and the session.
struct Home {
    _dir: tempfile::TempDir,
    idp: IdentityProvider,
    graph: GraphServer,
    config: Config,
    paths: Paths,
    store: RefCell<Store>,
    session: Session,
}

impl Home {
    async fn new(mail: &str) -> Home {
        let dir = tempfile::tempdir().unwrap();
        let idp = IdentityProvider::start(IdentityOptions {
            interval: Some(1),
            ..IdentityOptions::default()
        })
        .await
        .unwrap();
        let graph = GraphServer::start(GraphOptions {
            token_checker: Some(idp.token_checker()),
            ..GraphOptions::default()
        })
        .await
        .unwrap();
        let text = format!(
            "client_id = \"{TEST_CLIENT_ID}\"\nauthority = \"{}\"\ngraph_url = \"{}\"\n\
             [schedule]\ntimezone = \"Europe/Berlin\"\n[auth]\ntoken_store = \"file\"\n[mail]\n{mail}",
            idp.authority(),
            graph.base_url()
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        let paths = Paths::resolve_with(Some(dir.path().to_path_buf()), None, None).unwrap();
        let store = Store::open(&paths.database).unwrap();
        let http = crate::http::client(&config.http).unwrap();
        let settings = crate::auth::Settings::from_config(&config).unwrap();
        let session = Session::open(settings.clone(), &config, &paths, http.clone())
            .await
            .unwrap();
        let endpoints = session.endpoints().await.unwrap();
        let code = crate::auth::device::request_code(
            &http,
            &endpoints,
            TEST_CLIENT_ID,
            &settings.scope(Resource::Graph),
        )
        .await
        .unwrap();
        assert!(idp.approve(&code.user_code));
        let tokens = crate::auth::device::poll_for_tokens(
            &http,
            &endpoints,
            TEST_CLIENT_ID,
            &code,
            Duration::from_secs(30),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        session.complete_sign_in(tokens, Utc::now()).await.unwrap();
        Home {
            _dir: dir,
            idp,
            graph,
            config,
            paths,
            store: RefCell::new(store),
            session,
        }
    }

    fn settings(&self) -> Settings {
        Settings::from_config(&self.config, &self.paths)
    }

    fn enqueue(&self, n: usize, to: &str) -> Vec<i64> {
        let now = queue_time(Utc::now());
        self.store
            .borrow_mut()
            .write(|tx| {
                (0..n)
                    .map(|i| {
                        tx.enqueue(
                            &NewMail {
                                sender: None,
                                to: vec![to.to_string()],
                                cc: vec![],
                                bcc: vec![],
                                subject: format!("Hold review {i}"),
                                body: "Please review the holds.".into(),
                                body_type: BodyType::Text,
                                attachments: vec![],
                                key: None,
                            },
                            &now,
                        )
                        .map(|e| e.id)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
    }

    async fn drain(&self) -> DrainReport {
        drain(
            &self.settings(),
            &self.session,
            &self.store,
            &CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    fn mail(&self, id: i64) -> QueuedMail {
        self.store.borrow().mail(id).unwrap().unwrap()
    }

    fn audit(&self, op: Operation) -> Vec<serde_json::Value> {
        self.store
            .borrow()
            .audit_rows(&AuditFilter {
                operation: Some(op),
                ..AuditFilter::default()
            })
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(r.details.as_deref().unwrap_or("null")).unwrap())
            .collect()
    }

    /// The next send goes through, but its answer is lost (a 504 from the gateway).
    fn lose_next_send_answer(&self) {
        self.graph.fail_next_on(
            Endpoint::SendDraft,
            1,
            GraphFailure::GatewayTimeoutAfterProcessing,
        );
    }

    /// `queue retry` of `id`, taking sends requested more than `settled` ago as settled.
    fn retry(&self, id: i64, settled: chrono::Duration) -> RetryOutcome {
        crate::mail::queue::retry(
            &mut self.store.borrow_mut(),
            id,
            Utc::now(),
            settled.to_std().unwrap(),
        )
        .unwrap()
    }

    fn assert_no_duplicates(&self) {
        assert_eq!(self.graph.deliveries().duplicates(), Vec::<String>::new());
    }
}

#[tokio::test]
async fn twenty_one_queued_one_cycle_sends_twenty_and_the_next_the_last() {
    let h = Home::new("").await;
    h.graph.set_latency(Duration::from_millis(20));
    let ids = h.enqueue(21, "ben@contoso.com");
    let r = h.drain().await;
    assert_eq!(
        (r.sent, r.waiting, r.requeued, r.failed),
        (20, 1, 0, 0),
        "{r:?}"
    );
    assert_eq!(h.graph.deliveries().total, 20);
    assert_eq!(h.mail(ids[20]).state, MailState::Queued);
    // Oldest first; each sent one keeps its ids, and Graph saw four at once, no more.
    for id in &ids[..20] {
        let m = h.mail(*id);
        assert_eq!(m.state, MailState::Sent);
        assert_eq!(
            h.graph
                .deliveries()
                .of(m.internet_message_id.as_deref().unwrap()),
            1
        );
        assert!(m.graph_message_id.is_some() && m.sent_at.is_some());
    }
    let stats = h.graph.requests();
    assert_eq!(stats.max_in_flight_per_mailbox(), 4);
    assert_eq!(stats.lookup, 0, "first attempts need no lookup");
    let mut request_ids = stats.client_request_ids.clone();
    request_ids.sort();
    request_ids.dedup();
    assert_eq!(request_ids.len(), 40, "one client-request-id per request");
    let b = r.bucket.clone().unwrap();
    assert_eq!((b.tokens.floor(), b.sent_today), (0.0, 20));
    assert!(
        r.summary(&h.settings().params)
            .contains("1 wait for tokens")
    );
    // The bucket is empty: the same cycle again sends nothing.
    let again = h.drain().await;
    assert_eq!((again.sent, again.waiting), (0, 1));
    // The next cycle, a token (5 s) later, sends the last one. The bucket's clock is
    // moved back rather than the test waiting.
    let file = bucket_file(&h.paths);
    let mut st: State = serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap();
    st.last_refill -= chrono::Duration::seconds(5);
    std::fs::write(file.path(), serde_json::to_vec(&st).unwrap()).unwrap();
    let next = h.drain().await;
    assert_eq!((next.sent, next.waiting), (1, 0));
    assert_eq!(h.mail(ids[20]).state, MailState::Sent);
    h.assert_no_duplicates();
    let sent = h.audit(Operation::SendEmail);
    assert_eq!(sent.len(), 21);
    assert_eq!(sent[0]["to"], serde_json::json!(["ben@contoso.com"]));
    assert_eq!(sent[0]["sender"], ME);
    assert!(sent[0].get("body").is_none());
}

#[tokio::test]
async fn throttling_waits_each_retry_after_form_then_sends() {
    let h = Home::new("").await;
    // Whole seconds, fractional seconds, an HTTP date (whole seconds: 1 to 2 s ahead).
    for (form, waits) in [
        ("1", 1000..=1000),
        ("1.128", 1128..=1128),
        ("date", 900..=2000),
    ] {
        let retry_after = match form {
            "date" => (Utc::now() + chrono::Duration::seconds(2))
                .to_rfc2822()
                .replace("+0000", "GMT"),
            n => n.to_string(),
        };
        let id = h.enqueue(1, "ben@contoso.com")[0];
        h.graph.fail_next_on(
            Endpoint::CreateDraft,
            1,
            GraphFailure::Throttled {
                retry_after: Some(retry_after.clone()),
            },
        );
        let started = std::time::Instant::now();
        let r = h.drain().await;
        assert_eq!(r.sent, 1, "{r:?}");
        assert_eq!(h.mail(id).state, MailState::Sent);
        let last = h.audit(Operation::RateLimited).pop().unwrap();
        let wait = last["wait_ms"].as_u64().unwrap();
        assert!(waits.contains(&wait), "{form}: waited {wait} ms");
        assert!(started.elapsed() >= Duration::from_millis(wait));
        assert_eq!(
            (
                last["attempt"].as_u64(),
                last["status"].as_u64(),
                last["queue_id"].as_i64()
            ),
            (Some(1), Some(429), Some(id))
        );
    }
    assert_eq!(h.audit(Operation::RateLimited).len(), 3);
    h.assert_no_duplicates();
}

#[tokio::test]
async fn without_retry_after_the_waits_are_one_two_then_four_seconds_in_paused_time() {
    let h = Home::new("").await;
    let id = h.enqueue(1, "ben@contoso.com")[0];
    tokio::time::pause();
    h.graph
        .fail_next(3, GraphFailure::ServiceUnavailable { retry_after: None });
    let before = tokio::time::Instant::now();
    let wall = Utc::now();
    let r = h.drain().await;
    let slept = before.elapsed();
    tokio::time::resume();
    // Three attempts: waits of 1 s and 2 s between them, then back to the queue for 4 s.
    assert_eq!((r.sent, r.requeued), (0, 1), "{r:?}");
    assert!(
        slept >= Duration::from_secs(3) && slept < Duration::from_millis(3500),
        "{slept:?}"
    );
    let waits: Vec<_> = h
        .audit(Operation::RateLimited)
        .iter()
        .map(|d| d["wait_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(waits, vec![1000, 2000, 4000]);
    let m = h.mail(id);
    assert_eq!((m.state, m.attempts), (MailState::Queued, 3));
    assert!(m.last_error.as_deref().unwrap().contains("HTTP 503"));
    let due = chrono::DateTime::parse_from_rfc3339(&m.next_attempt_at).unwrap();
    let ahead = (due.with_timezone(&Utc) - wall).num_seconds();
    assert!(
        (3..=6).contains(&ahead),
        "due {ahead} s after the drain began"
    );
}

#[tokio::test]
async fn out_of_attempts_a_mail_fails_and_queue_retry_revives_it() {
    let h = Home::new("attempts_per_cycle = 3\nmax_attempts_total = 4").await;
    let id = h.enqueue(1, "ben@contoso.com")[0];
    let now503 = || GraphFailure::ServiceUnavailable {
        retry_after: Some("0".into()),
    };
    h.graph.fail_next(3, now503());
    let r = h.drain().await;
    assert_eq!(r.requeued, 1);
    assert_eq!(h.mail(id).state, MailState::Queued);
    // A fourth failure is the last.
    h.graph.fail_next(1, now503());
    let r = h.drain().await;
    assert_eq!(r.failed, 1);
    let m = h.mail(id);
    assert_eq!((m.state, m.attempts), (MailState::Failed, 4));
    let failed = h.audit(Operation::SendFailed);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["status"].as_u64(), Some(503));
    // Not attempted again until revived.
    assert_eq!(h.drain().await, DrainReport::default());
    h.retry(id, chrono::Duration::zero());
    let lookups = h.graph.requests().lookup;
    let r = h.drain().await;
    assert_eq!(r.sent, 1);
    assert_eq!(h.mail(id).state, MailState::Sent);
    // The revived mail was looked up (Sent Items, Drafts) before anything was created.
    assert_eq!(h.graph.requests().lookup, lookups + 2);
    h.assert_no_duplicates();
}

#[tokio::test]
async fn an_ambiguous_504_after_the_send_went_through_is_not_sent_again() {
    let h = Home::new("").await;
    let id = h.enqueue(1, "ben@contoso.com")[0];
    h.lose_next_send_answer();
    let r = h.drain().await;
    assert_eq!((r.sent, r.found_sent), (0, 1), "{r:?}");
    let m = h.mail(id);
    assert_eq!(m.state, MailState::Sent);
    assert_eq!(
        h.graph
            .deliveries()
            .of(m.internet_message_id.as_deref().unwrap()),
        1
    );
    assert_eq!(h.graph.requests().send_draft, 1);
    // Its day's send stays counted once.
    assert_eq!(r.bucket.unwrap().sent_today, 1);
    // A 504 before anything happened: the draft is found in Drafts and sent once.
    let id = h.enqueue(1, "ben@contoso.com")[0];
    h.graph
        .fail_next_on(Endpoint::SendDraft, 1, GraphFailure::GatewayTimeout);
    let r = h.drain().await;
    assert_eq!(r.sent, 1);
    assert_eq!(h.graph.requests().create_draft, 2, "the draft was reused");
    assert_eq!(h.mail(id).state, MailState::Sent);
    h.assert_no_duplicates();
}

#[tokio::test]
async fn a_mail_left_sending_by_a_crash_is_settled_by_a_lookup() {
    let h = Home::new("").await;
    let ids = h.enqueue(2, "ben@contoso.com");
    // A crash after the attempt began (nothing reached Graph) ...
    h.store
        .borrow_mut()
        .write(|tx| tx.begin_attempt(ids[0], "<crash-1@contoso.onmicrosoft.com>", ME))
        .unwrap();
    // ... and one after the send went through, before it was marked sent.
    h.store
        .borrow_mut()
        .write(|tx| tx.begin_attempt(ids[1], "<crash-2@contoso.onmicrosoft.com>", ME))
        .unwrap();
    let http = crate::http::client(&h.config.http).unwrap();
    let g = GraphMail::new(http, &h.graph.base_url());
    let token = h
        .session
        .access_token(Resource::Graph, Utc::now())
        .await
        .unwrap()
        .token;
    let to = vec!["ben@contoso.com".to_string()];
    let message = Message {
        subject: "Hold review 1",
        body: "x",
        body_type: BodyType::Text,
        to: &to,
        cc: &[],
        bcc: &[],
        attachments: &[],
        internet_message_id: "<crash-2@contoso.onmicrosoft.com>",
    };
    let draft = g.create_draft(&token, ME, &message, "r").await.unwrap();
    g.send_draft(&token, ME, &draft, "r").await.unwrap();
    let r = h.drain().await;
    assert_eq!((r.sent, r.found_sent), (1, 1), "{r:?}");
    for id in &ids {
        assert_eq!(h.mail(*id).state, MailState::Sent);
    }
    let d = h.graph.deliveries();
    assert_eq!(d.of("<crash-1@contoso.onmicrosoft.com>"), 1);
    assert_eq!(d.of("<crash-2@contoso.onmicrosoft.com>"), 1);
    h.assert_no_duplicates();
}

#[tokio::test]
async fn a_401_costs_one_silent_refresh_then_the_send_goes_through() {
    let h = Home::new("").await;
    let id = h.enqueue(1, "ben@contoso.com")[0];
    let before = h.idp.stats().refresh_grants;
    h.graph.fail_next(1, GraphFailure::ExpiredToken);
    let r = h.drain().await;
    assert_eq!(r.sent, 1, "{r:?} {:?}", h.mail(id));
    assert_eq!(h.idp.stats().refresh_grants, before + 1);
    assert_eq!(
        h.mail(id).attempts,
        1,
        "the refresh repeat is part of the attempt"
    );
    assert!(h.audit(Operation::RateLimited).is_empty());
    // Refused again after the refresh: one refresh only; the mail waits and the cycle
    // stops sending.
    let again = h.enqueue(1, "ben@contoso.com")[0];
    h.graph.fail_next(2, GraphFailure::ExpiredToken);
    let r = h.drain().await;
    assert_eq!(h.idp.stats().refresh_grants, before + 2);
    assert_eq!((r.sent, r.requeued), (0, 1), "{r:?}");
    assert!(
        r.halted
            .as_deref()
            .unwrap()
            .contains("refuses the signed-in account's token")
    );
    let m = h.mail(again);
    assert_eq!((m.state, m.attempts), (MailState::Queued, 1));
    assert!(m.last_error.unwrap().contains("HTTP 401"));
    h.assert_no_duplicates();
}

#[tokio::test]
async fn a_bad_recipient_fails_at_once_with_graphs_code() {
    let h = Home::new("").await;
    let id = h.enqueue(1, "nobody@invalid.example")[0];
    let r = h.drain().await;
    assert_eq!(r.failed, 1);
    let m = h.mail(id);
    assert_eq!((m.state, m.attempts), (MailState::Failed, 1));
    let e = m.last_error.unwrap();
    assert!(e.contains("HTTP 400 ErrorInvalidRecipients"), "{e}");
    assert_eq!(h.graph.requests().create_draft, 1, "no repeat");
    let failed = h.audit(Operation::SendFailed);
    assert_eq!(failed[0]["code"], "ErrorInvalidRecipients");
    // Nothing was sent: the day's send goes back.
    assert_eq!(r.bucket.unwrap().sent_today, 0);
    // An unknown sending mailbox: 404, failed too.
    let now = queue_time(Utc::now());
    let other = h
        .store
        .borrow_mut()
        .write(|tx| {
            tx.enqueue(
                &NewMail {
                    sender: Some("ghost@contoso.com".into()),
                    to: vec!["ben@contoso.com".into()],
                    cc: vec![],
                    bcc: vec![],
                    subject: "s".into(),
                    body: String::new(),
                    body_type: BodyType::Text,
                    attachments: vec![],
                    key: None,
                },
                &now,
            )
        })
        .unwrap()
        .id;
    assert_eq!(h.drain().await.failed, 1);
    assert!(h.mail(other).last_error.unwrap().contains("HTTP 404"));
    // No permission for the mailbox: 403, failed too.
    let denied = h.enqueue(1, "ben@contoso.com")[0];
    h.graph.fail_next(1, GraphFailure::AccessDenied);
    assert_eq!(h.drain().await.failed, 1);
    assert!(
        h.mail(denied)
            .last_error
            .unwrap()
            .contains("HTTP 403 ErrorAccessDenied")
    );
}

#[tokio::test]
async fn a_retry_after_beyond_max_retry_wait_requeues_and_stops_the_cycle() {
    let h = Home::new("max_in_flight = 1").await;
    let ids = h.enqueue(3, "ben@contoso.com");
    h.graph.fail_next(
        1,
        GraphFailure::Throttled {
            retry_after: Some("120".into()),
        },
    );
    let started = std::time::Instant::now();
    let r = h.drain().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not slept through"
    );
    assert_eq!((r.sent, r.requeued, r.waiting), (0, 1, 2), "{r:?}");
    assert!(r.halted.as_deref().unwrap().contains("2m"), "{r:?}");
    let m = h.mail(ids[0]);
    let due = chrono::DateTime::parse_from_rfc3339(&m.next_attempt_at).unwrap();
    assert!((due.with_timezone(&Utc) - Utc::now()).num_seconds() > 100);
    assert_eq!(h.mail(ids[1]).state, MailState::Queued);
    assert_eq!(h.mail(ids[1]).attempts, 0);
    // The two never attempted gave their tokens back; the throttled one spent its own.
    let b = r.bucket.unwrap();
    assert_eq!((b.tokens.floor(), b.sent_today), (19.0, 0));
}

#[tokio::test]
async fn a_corrupt_bucket_file_is_rebuilt_empty_with_a_warning_and_an_audit_row() {
    let h = Home::new("").await;
    // Two mails went out earlier today.
    h.enqueue(2, "ben@contoso.com");
    assert_eq!(h.drain().await.sent, 2);
    let file = bucket_file(&h.paths);
    std::fs::write(file.path(), b"{\"version\": 1, \"tokens\": tru").unwrap();
    h.enqueue(1, "ben@contoso.com");
    let r = h.drain().await;
    assert_eq!((r.sent, r.waiting), (0, 1));
    assert!(r.rebuilt.unwrap().contains("send-bucket.json"));
    let b = r.bucket.unwrap();
    assert_eq!(b.sent_today, 2, "rebuilt from the queue's sent mails");
    assert!(b.tokens < 1.0);
    let errors = h.audit(Operation::Error);
    assert_eq!(errors.last().unwrap()["what"], "send_bucket_rebuilt");
    // The rebuilt state was written back: no second warning.
    assert!(h.drain().await.rebuilt.is_none());
}

#[tokio::test]
async fn a_bucket_file_from_an_earlier_day_starts_the_new_day_when_loaded() {
    let h = Home::new("daily_cap = 3").await;
    let file = bucket_file(&h.paths);
    // Written yesterday (the daemon was down over midnight), with the day's cap used up.
    let yesterday = Utc::now() - chrono::Duration::days(1);
    let old = State {
        version: crate::ratelimit::STATE_VERSION,
        tokens: 20.0,
        last_refill: yesterday,
        day: h.settings().zone.date_of(yesterday),
        sent_today: 3,
        reserved: None,
    };
    std::fs::write(file.path(), serde_json::to_vec(&old).unwrap()).unwrap();
    h.enqueue(4, "ben@contoso.com");
    let r = h.drain().await;
    assert_eq!((r.sent, r.waiting), (3, 1), "{r:?}");
    let b = r.bucket.clone().unwrap();
    assert_eq!(
        (b.day, b.sent_today),
        (h.settings().zone.date_of(Utc::now()), 3)
    );
    assert!(
        r.summary(&h.settings().params)
            .contains("for tomorrow (daily cap reached)")
    );
}

#[tokio::test]
async fn a_send_without_an_answer_waits_for_sent_items_and_is_never_sent_blind() {
    let h = Home::new("confirm_within = \"3s\"").await;
    // Exchange takes 2.5 s to file a sent mail: a lookup 1 s after the lost answer finds
    // it in neither Drafts nor Sent Items.
    h.graph.set_submission_delay(Duration::from_millis(2500));
    let id = h.enqueue(1, "ben@contoso.com")[0];
    h.lose_next_send_answer();
    let r = h.drain().await;
    assert_eq!((r.sent, r.requeued), (0, 1), "{r:?}");
    let m = h.mail(id);
    assert_eq!(m.state, MailState::Queued);
    assert!(
        m.last_error
            .as_deref()
            .unwrap()
            .contains("not yet in Sent Items"),
        "{m:?}"
    );
    assert!(m.send_requested_at.is_some());
    assert_eq!(h.graph.requests().create_draft, 1, "no second draft");
    assert_eq!(r.bucket.unwrap().sent_today, 1, "it may have gone: counted");
    // Due again when Sent Items must have it; the re-check is no new send.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = h.drain().await;
    assert_eq!(r.found_sent, 1, "{r:?}");
    assert_eq!(r.bucket.as_ref().unwrap().sent_today, 1);
    assert_eq!(h.mail(id).state, MailState::Sent);
    let imid = h.mail(id).internet_message_id.unwrap();
    assert_eq!(h.graph.deliveries().of(&imid), 1);

    // A mail that never shows up: failed for a person, not sent again.
    h.graph.set_submission_delay(Duration::from_secs(3600));
    let id = h.enqueue(1, "ben@contoso.com")[0];
    h.lose_next_send_answer();
    assert_eq!(h.drain().await.requeued, 1);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = h.drain().await;
    assert_eq!(r.failed, 1, "{r:?}");
    let m = h.mail(id);
    let e = m.last_error.unwrap();
    assert!(
        e.contains("SendUnconfirmed") && e.contains(&format!("imm-daemon queue retry {id}")),
        "{e}"
    );
    assert_eq!(h.graph.deliveries().of(&m.internet_message_id.unwrap()), 1);
    assert_eq!(h.graph.requests().create_draft, 2);
    h.assert_no_duplicates();
}

#[tokio::test]
async fn a_clock_set_back_since_the_last_write_earns_no_tokens() {
    let h = Home::new("").await;
    let file = bucket_file(&h.paths);
    // The last write happened "an hour from now": the clock was set back since.
    let later = Utc::now() + chrono::Duration::hours(1);
    let written = State {
        version: crate::ratelimit::STATE_VERSION,
        tokens: 0.5,
        last_refill: later,
        day: h.settings().zone.date_of(Utc::now()),
        sent_today: 20,
        reserved: None,
    };
    std::fs::write(file.path(), serde_json::to_vec(&written).unwrap()).unwrap();
    h.enqueue(1, "ben@contoso.com");
    let r = h.drain().await;
    assert_eq!((r.sent, r.waiting), (0, 1), "{r:?}");
    let b = r.bucket.unwrap();
    // Only the moments the drain itself took were earned.
    assert!(b.tokens < 0.6 && b.sent_today == 20, "{b:?}");
    assert!(
        b.last_refill <= Utc::now(),
        "counting resumes from the clock's reading"
    );
}

#[tokio::test]
async fn a_retry_after_an_unconfirmed_send_looks_first_and_finds_it_sent() {
    let h = Home::new("confirm_within = \"1s\"").await;
    // Exchange is slow to file it: 2.5 s in the Outbox.
    h.graph.set_submission_delay(Duration::from_millis(2500));
    let id = h.enqueue(1, "ben@contoso.com")[0];
    h.lose_next_send_answer();
    // Not found a second later, past confirm_within: failed for a person.
    let r = h.drain().await;
    assert_eq!(r.failed, 1, "{r:?}");
    let e = h.mail(id).last_error.unwrap();
    assert!(
        e.contains("SendUnconfirmed") && e.contains("may have gone"),
        "{e}"
    );
    // A person retries it once Sent Items has it: it is looked up first, found, and not
    // sent again.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    h.retry(id, chrono::Duration::seconds(1));
    let r = h.drain().await;
    assert_eq!((r.sent, r.found_sent), (0, 1), "{r:?}");
    assert_eq!(h.mail(id).state, MailState::Sent);
    h.assert_no_duplicates();
    assert_eq!(h.graph.requests().create_draft, 1);
}

#[tokio::test]
async fn a_lost_answer_on_the_last_attempt_waits_in_transit_then_needs_a_person() {
    let h = Home::new("max_attempts_total = 1\nconfirm_within = \"1s\"").await;
    // The mail never shows in Sent Items within the window.
    h.graph.set_submission_delay(Duration::from_secs(3600));
    let id = h.enqueue(1, "ben@contoso.com")[0];
    h.lose_next_send_answer();
    // Out of attempts, but perhaps sent: it waits like any mail in transit.
    let r = h.drain().await;
    assert_eq!(r.requeued, 1, "{r:?}");
    let e = h.mail(id).last_error.unwrap();
    assert!(
        e.contains("not yet in Sent Items") && e.contains("HTTP 504"),
        "{e}"
    );
    assert_eq!(r.bucket.unwrap().sent_today, 1, "it may have gone: counted");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = h.drain().await;
    assert_eq!(r.failed, 1, "{r:?}");
    let m = h.mail(id);
    assert!(
        m.last_error.as_deref().unwrap().contains("SendUnconfirmed"),
        "{m:?}"
    );
    // Within a day of the request, a retry is refused: it may still arrive.
    let found = h.retry(id, chrono::Duration::days(1));
    assert!(
        matches!(
            found,
            RetryOutcome::Refused(RetryRefusal::MayStillArrive { .. })
        ),
        "{found:?}"
    );
    assert_eq!(h.mail(id).state, MailState::Failed);
    assert_eq!(h.graph.requests().create_draft, 1);
}

#[tokio::test]
async fn a_draft_found_again_that_is_gone_when_sent_is_in_transit() {
    let h = Home::new("").await;
    let id = h.enqueue(1, "ben@contoso.com")[0];
    // The send's answer is lost; a second later the draft is still listed, but Exchange
    // is submitting it: its send answers 404.
    h.graph
        .fail_next_on(Endpoint::SendDraft, 1, GraphFailure::GatewayTimeout);
    h.graph
        .fail_next_on(Endpoint::SendDraft, 1, GraphFailure::ItemNotFound);
    let r = h.drain().await;
    assert_eq!((r.requeued, r.failed), (1, 0), "{r:?}");
    let m = h.mail(id);
    assert_eq!(m.state, MailState::Queued);
    assert!(m.last_error.unwrap().contains("not yet in Sent Items"));
    assert_eq!(h.graph.requests().create_draft, 1);
}

#[tokio::test]
async fn a_drain_stopped_by_another_mails_long_retry_after_puts_back_the_mail_between_attempts() {
    let h = Home::new("max_in_flight = 2").await;
    let ids = h.enqueue(2, "ben@contoso.com");
    // The first waits a second before its repeat; meanwhile the second is told to wait
    // two minutes, which stops the drain.
    h.graph.fail_next(
        1,
        GraphFailure::ServiceUnavailable {
            retry_after: Some("1".into()),
        },
    );
    h.graph.fail_next(
        1,
        GraphFailure::Throttled {
            retry_after: Some("120".into()),
        },
    );
    let r = h.drain().await;
    assert_eq!((r.sent, r.requeued), (0, 2), "{r:?}");
    assert!(r.halted.is_some());
    let first = h.mail(ids[0]);
    assert_eq!((first.state, first.attempts), (MailState::Queued, 1));
    assert!(first.last_error.unwrap().contains("HTTP 503"));
    let second = h.mail(ids[1]);
    let due = chrono::DateTime::parse_from_rfc3339(&second.next_attempt_at).unwrap();
    assert!((due.with_timezone(&Utc) - Utc::now()).num_seconds() > 100);
}

#[tokio::test]
async fn an_absurd_retry_after_puts_a_mail_off_a_day_at_most() {
    let h = Home::new("").await;
    let id = h.enqueue(1, "ben@contoso.com")[0];
    h.graph.fail_next(
        1,
        GraphFailure::Throttled {
            retry_after: Some("999999999".into()),
        },
    );
    let r = h.drain().await;
    assert_eq!(r.requeued, 1);
    let due = chrono::DateTime::parse_from_rfc3339(&h.mail(id).next_attempt_at).unwrap();
    let ahead = (due.with_timezone(&Utc) - Utc::now()).num_seconds();
    assert!((86_000..=86_400).contains(&ahead), "{ahead}");
}

#[tokio::test]
async fn a_reservation_left_by_a_killed_drain_is_recounted_from_the_queue() {
    let h = Home::new("").await;
    h.enqueue(2, "ben@contoso.com");
    assert_eq!(h.drain().await.sent, 2);
    // A drain reserved 18 more sends and was killed before giving any back.
    let file = bucket_file(&h.paths);
    let mut st: State = serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap();
    st.sent_today += 18;
    st.reserved = Some(18);
    std::fs::write(file.path(), serde_json::to_vec(&st).unwrap()).unwrap();
    h.enqueue(1, "ben@contoso.com");
    let r = h.drain().await;
    assert_eq!(r.sent, 1);
    let b = r.bucket.unwrap();
    assert_eq!(
        (b.sent_today, b.reserved),
        (3, None),
        "two sent before, one now"
    );
}
