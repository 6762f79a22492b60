//! Outbound mail queue benchmarks (issue 5), on a real SQLite file in a temporary
//! directory (WAL, synchronous=FULL, as `Store::open` sets it up).
//!
//! - `mail_bookkeeping/per_sent_mail`: the store work one sent mail costs in a drain,
//!   network excluded (target < 1 ms): the attempt begins (`Tx::begin_attempt`, its
//!   internetMessageId committed), the attachments are read for the draft, the draft is
//!   and the send request are recorded (`Tx::record_send`), and the mail is marked sent
//!   with its SEND_EMAIL audit row in one transaction (`outbox::record_sent`, as the
//!   drain does it). Three commits, so three
//!   WAL fsyncs.
//! - `mail_bookkeeping/bucket_update`: one `BucketFile::update` of the send bucket (lock,
//!   read, write the JSON atomically). A drain makes two, whatever it sends: the
//!   reservation at the start and the give-back at the end.
//! - `mail_bookkeeping/per_sent_mail_with_bucket`: `per_sent_mail` with a bucket update
//!   every tenth mail, i.e. the two updates of a full 20-mail drain spread over its mails
//!   (should come out near `per_sent_mail` + `bucket_update` / 10).
//! - `mail_drain/20_mails`: `imm_daemon::mail::outbox::drain` of 20 due mails against the
//!   emulated Graph on loopback (no latency, no failures, access tokens checked by the
//!   emulated identity provider) with a signed-in session, all on one current-thread
//!   tokio runtime, as in the outbox's tests (target < 200 ms). Sign-in, enqueueing the
//!   20 mails and refilling the bucket happen before timing starts, and the sent mails of
//!   earlier iterations are purged then, so every drain sees the same queue.
//! - `mail_drain/20_mails_100k_sent`: the same with 100,000 sent mails kept in the queue
//!   (close to three years at the default daily cap, never purged; 20 more each
//!   iteration): the drain's queue counts read index ranges, so sent mails should not
//!   slow it.
//!
//! The bookkeeping's mails are enqueued outside timing, in one transaction per sample,
//! and walked through in id order; the database grows by the mails and audit rows of
//! every iteration, as a daemon's does. Run with `cargo bench --bench mail`; pass a filter such
//! as `cargo bench --bench mail -- mail_drain` to run part of it.

use std::cell::RefCell;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use imm_daemon::auth::{Resource, Session};
use imm_daemon::config::Config;
use imm_daemon::config::Zone;
use imm_daemon::mail::graph::new_internet_message_id;
use imm_daemon::mail::outbox::{Settings, drain, record_sent};
use imm_daemon::mail::{BodyType, NewMail};
use imm_daemon::paths::Paths;
use imm_daemon::ratelimit::{BucketFile, Params, State};
use imm_daemon::store::{QueuedMail, Store};
use imm_daemon::time::stamp_millis;
use imm_emulators::identity::{IdentityOptions, IdentityProvider, TEST_CLIENT_ID};
use imm_emulators::{GraphOptions, GraphServer};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The emulated provider's test user, who signs in and sends.
const ME: &str = "adele.vance@contoso.onmicrosoft.com";

/// Sent mails kept in the queue for `mail_drain/20_mails_100k_sent`: close to three
/// years at the default daily cap (100), never purged.
const HISTORY: u64 = 100_000;

const DOMAINS: [&str; 4] = [
    "contoso.com",
    "fabrikam.com",
    "northwindtraders.com",
    "woodgrovebank.com",
];

/// A realistic notification body, 436 bytes (the one of `benches/whole-process.sh`).
const BODY: &str = "Hello,\n\nthe inactive mailbox named in the subject is still on \
litigation hold and has been inactive for more than 180 days. Its holds cost the company \
a licence every month. Please review whether the hold is still needed and tell the \
compliance team by the end of the month; without an answer the hold stays in place.\n\n\
Mailbox size and holds are in the inventory report in the admin portal.\n\n\
Regards,\nIT Operations (sent by imm-daemon)\n";

/// Mail `i` of a run: one to two recipients, a copy to the compliance team on every
/// third, a subject naming a mailbox.
fn new_mail(i: u64) -> NewMail {
    let domain = DOMAINS[(i % 4) as usize];
    let mut to = vec![format!("owner.{}@{domain}", i % 997)];
    if i.is_multiple_of(5) {
        to.push(format!("deputy.{}@{domain}", i % 331));
    }
    let cc = if i.is_multiple_of(3) {
        vec![format!("compliance@{domain}")]
    } else {
        vec![]
    };
    NewMail {
        sender: None,
        to,
        cc,
        bcc: vec![],
        subject: format!("Inactive mailbox user.{i}@{domain}: hold review due"),
        body: BODY.to_string(),
        body_type: BodyType::Text,
        attachments: vec![],
        key: None,
    }
}

/// Enqueues `n` mails, numbered from `first`, in one transaction, and returns them as
/// the drain reads them.
fn enqueue(store: &mut Store, first: u64, n: u64) -> Vec<QueuedMail> {
    let now = stamp_millis(Utc::now());
    let ids = store
        .write(|tx| {
            (first..first + n)
                .map(|i| tx.enqueue(&new_mail(i), &now).map(|e| e.id))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("enqueue succeeds");
    ids.iter()
        .map(|id| store.mail(*id).expect("read").expect("mail exists"))
        .collect()
}

fn berlin() -> Zone {
    Zone::parse("Europe/Berlin").expect("zone")
}

/// The store work of one sent mail, as the outbox does it (see the module's
/// documentation).
fn sent_mail(store: &mut Store, mail: &QueuedMail) {
    let sender = ME;
    let fresh = new_internet_message_id(sender);
    let imid = store
        .write(|tx| tx.begin_attempt(mail.id, &fresh, sender))
        .expect("begin attempt")
        .expect("the mail is queued")
        .internet_message_id;
    black_box(store.mail_attachments(mail.id).expect("attachments"));
    let draft = format!("AAMkAGI2TG93AAA{:016x}=", mail.id);
    store
        .write(|tx| tx.record_send(mail.id, &draft, &stamp_millis(Utc::now())))
        .expect("record the send");
    record_sent(store, mail, sender, &imid, false, Utc::now()).expect("mark sent");
}

/// A bucket that never runs dry, so every update does the same work.
fn roomy() -> Params {
    Params {
        capacity: 10_000,
        refill_every: Duration::from_millis(1),
        daily_cap: 1_000_000,
    }
}

/// One bucket update: a reservation of up to 20 sends, as a drain starts with (a
/// give-back costs the same file work).
fn bucket_update(bucket: &BucketFile, params: &Params, zone: &Zone) {
    let now = Utc::now();
    let (n, _) = bucket
        .update(
            params,
            zone,
            now,
            || 0,
            |st| {
                let (after, n) = st.reserve(params, zone, now, 20);
                // Nothing is sent: the day's count stays where it was.
                let after = after.give_back(params, zone, now, after.day, 0, n);
                (after, n)
            },
        )
        .expect("bucket update");
    black_box(n);
}

fn bookkeeping(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut store = Store::open(&dir.path().join("imm-daemon.db")).expect("database opens");
    let bucket = BucketFile::new(&dir.path().join("send-bucket.json"));
    let (params, zone) = (roomy(), berlin());
    let mut next = 0u64;
    let mut g = c.benchmark_group("mail_bookkeeping");
    g.sample_size(50);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("per_sent_mail", |b| {
        b.iter_custom(|iters| {
            let mails = enqueue(&mut store, next, iters);
            next += iters;
            let start = Instant::now();
            for m in &mails {
                sent_mail(&mut store, m);
            }
            start.elapsed()
        })
    });
    g.bench_function("bucket_update", |b| {
        b.iter(|| bucket_update(&bucket, &params, &zone))
    });
    g.bench_function("per_sent_mail_with_bucket", |b| {
        b.iter_custom(|iters| {
            let mails = enqueue(&mut store, next, iters);
            let start = Instant::now();
            for (i, m) in mails.iter().enumerate() {
                if (next + i as u64).is_multiple_of(10) {
                    bucket_update(&bucket, &params, &zone);
                }
                sent_mail(&mut store, m);
            }
            next += iters;
            start.elapsed()
        })
    });
    g.finish();
}

/// A signed-in home against the emulated provider and Graph, as the outbox's tests set
/// one up: device-code sign-in, tokens in the encrypted file, a real SQLite queue.
struct Home {
    _dir: TempDir,
    _idp: IdentityProvider,
    _graph: GraphServer,
    settings: Settings,
    store: RefCell<Store>,
    session: Session,
}

impl Home {
    async fn new() -> Home {
        let dir = tempfile::tempdir().expect("temporary directory");
        let idp = IdentityProvider::start(IdentityOptions {
            interval: Some(1),
            ..IdentityOptions::default()
        })
        .await
        .expect("identity provider starts");
        let graph = GraphServer::start(GraphOptions {
            token_checker: Some(idp.token_checker()),
            ..GraphOptions::default()
        })
        .await
        .expect("Graph starts");
        // Capacity 20 as by default (one drain takes at most that many due mails); the
        // day's cap never stops the benchmark.
        let text = format!(
            "client_id = \"{TEST_CLIENT_ID}\"\nauthority = \"{}\"\ngraph_url = \"{}\"\n\
             [schedule]\ntimezone = \"Europe/Berlin\"\n[auth]\ntoken_store = \"file\"\n\
             [mail]\ncapacity = 20\nrefill_every = \"1s\"\ndaily_cap = 1000000\n",
            idp.authority(),
            graph.base_url()
        );
        let config = Config::parse(&text, Path::new("bench.toml")).expect("config parses");
        let paths = Paths::resolve_with(Some(dir.path().to_path_buf()), None, None).expect("paths");
        let store = Store::open(&paths.database).expect("database opens");
        let http = imm_daemon::http::client(&config.http).expect("HTTP client");
        let auth = imm_daemon::auth::Settings::from_config(&config).expect("auth settings");
        let session = Session::open(auth.clone(), &config, &paths, http.clone())
            .await
            .expect("session opens");
        let endpoints = session.endpoints().await.expect("endpoints");
        let code = imm_daemon::auth::device::request_code(
            &http,
            &endpoints,
            TEST_CLIENT_ID,
            &auth.scope(Resource::Graph),
        )
        .await
        .expect("device code");
        assert!(idp.approve(&code.user_code));
        let tokens = imm_daemon::auth::device::poll_for_tokens(
            &http,
            &endpoints,
            TEST_CLIENT_ID,
            &code,
            Duration::from_secs(30),
            &CancellationToken::new(),
        )
        .await
        .expect("tokens");
        session
            .complete_sign_in(tokens, Utc::now())
            .await
            .expect("sign-in completes");
        Home {
            _dir: dir,
            _idp: idp,
            _graph: graph,
            settings: Settings::from_config(&config, &paths),
            store: RefCell::new(store),
            session,
        }
    }

    /// A full bucket with nothing sent today, written as a drain finds it.
    fn refill(&self) {
        let s = &self.settings;
        let now = Utc::now();
        s.bucket
            .update(
                &s.params,
                &s.zone,
                now,
                || 0,
                |_| (State::full(&s.params, &s.zone, now), ()),
            )
            .expect("bucket refilled");
    }
}

/// Marks `n` mails sent long ago: the history a daemon keeps until `queue purge`.
fn fill_sent(store: &mut Store, first: u64, n: u64) {
    store
        .write(|tx| {
            for i in first..first + n {
                let id = tx.enqueue(&new_mail(i), "2024-01-01T08:00:00Z")?.id;
                tx.mark_sent(id, "2024-01-01T08:00:01Z")?;
            }
            Ok::<_, imm_daemon::store::StoreError>(())
        })
        .expect("history filled");
}

/// `name`: a drain of 20 due mails per iteration; `purge` deletes the sent mails before
/// each one, so that every drain sees the same queue.
fn bench_drain(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    home: &Home,
    next: &mut u64,
    purge: bool,
) {
    let cancel = CancellationToken::new();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if purge {
                    home.store
                        .borrow_mut()
                        .write(|tx| tx.purge_sent("9999-12-31T23:59:59Z"))
                        .expect("purge");
                }
                enqueue(&mut home.store.borrow_mut(), *next, 20);
                *next += 20;
                home.refill();
                let start = Instant::now();
                let report = rt
                    .block_on(drain(&home.settings, &home.session, &home.store, &cancel))
                    .expect("drain succeeds");
                total += start.elapsed();
                assert_eq!(
                    (report.sent, report.waiting, report.failed),
                    (20, 0, 0),
                    "{report:?}"
                );
            }
            total
        })
    });
}

fn drain_20(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let home = rt.block_on(Home::new());
    let mut next = 0u64;
    let mut g = c.benchmark_group("mail_drain");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(15));
    bench_drain(&mut g, "20_mails", &rt, &home, &mut next, true);
    // Fewer iterations, so that the history grows by less than a tenth meanwhile.
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    fill_sent(&mut home.store.borrow_mut(), next, HISTORY);
    next += HISTORY;
    bench_drain(&mut g, "20_mails_100k_sent", &rt, &home, &mut next, false);
    g.finish();
}

criterion_group!(benches, bookkeeping, drain_20);
criterion_main!(benches);
