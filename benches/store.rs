//! Store benchmarks on a real SQLite file in a temporary directory (WAL, synchronous=FULL,
//! as `Store::open` sets it up).
//!
//! - `upsert_10k/insert`: 10,000 mailboxes into a fresh database, one transaction
//!   (target < 50 ms).
//! - `upsert_10k/insert_checkpoint`: the same followed by a checkpoint, which copies the
//!   WAL into the database file; the store keeps checkpoints off the write path, so this
//!   is the whole disk cost of the insert, paid later (at close, or when a long-running
//!   process checkpoints).
//! - `upsert_10k/update`: the same 10,000 mailboxes again into a database that already
//!   holds them (the update path of a repeated snapshot import).
//! - `upsert_1m/insert`: 1,000,000 mailboxes into a fresh database (target < 5 s).
//! - `read/*`: what `mailboxes list`, `mailboxes search` and `mailboxes stats` read from
//!   the store, without process start-up and output: `search_100k` finds 11 rows,
//!   `search_1pct_100k` 1,000 (1 %), both through the search index; `stats_10k` and
//!   `stats_100k` tally the cache in one pass (targets < 5 ms and < 50 ms for the whole
//!   command); `stats_kept_10k` and `stats_kept_100k` move tallies an earlier `stats`
//!   kept an hour before forward to now, as `stats` does when the table has not changed;
//!   `stats_written_100k` reads the summary a write of 100 sizes just carried forward.
//! - `write/sizes_100_kept_100k` and `write/sizes_100_unkept_100k`: the statistics phase's
//!   write of 100 sizes into the 100,000-mailbox cache, with tallies kept (the write folds
//!   its changes into them and sums their summary again) and with none kept.
//!
//! The mailboxes are built before timing starts; opening the database and dropping it
//! afterwards are not timed. Run with `cargo bench --bench store`; pass a filter such as
//! `cargo bench --bench store -- upsert_10k` to run part of it.

use std::hint::black_box;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use imm_daemon::inventory::{ExoMailbox, InactiveMailbox};
use imm_daemon::store::{MailboxFilter, Store};
use tempfile::TempDir;

mod common;
use common::config;

const COMPANIES: [(&str, &str); 4] = [
    ("Contoso Ltd", "contoso.com"),
    ("Fabrikam Inc", "fabrikam.com"),
    ("Northwind Traders", "northwindtraders.com"),
    ("Woodgrove Bank", "woodgrovebank.com"),
];

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap()
}

/// SplitMix64, so every run builds the same mailboxes.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` realistic, distinct inactive mailboxes, as an import builds them.
fn mailboxes(n: u64) -> Vec<InactiveMailbox> {
    let cfg = config();
    let now = now();
    (0..n)
        .map(|i| {
            let r = mix(i);
            let (company, domain) = COMPANIES[(r % 4) as usize];
            let guid = format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                (r >> 32) as u32,
                (r >> 16) as u16,
                r & 0xfff,
                (r >> 12) & 0xfff,
                i
            );
            let mut in_place_holds = Vec::new();
            if r.is_multiple_of(3) {
                in_place_holds.push(format!("UniH{:016x}{:016x}", mix(r), mix(r + 1)));
            }
            if r % 5 < 3 {
                in_place_holds.push(format!("mbx{:016x}{:016x}:1", mix(r + 2), mix(r + 3)));
            }
            if r.is_multiple_of(7) {
                in_place_holds.push(format!("-mbx{:016x}{:016x}:1", mix(r + 4), mix(r + 5)));
            }
            let size = mix(r + 6) % (50 << 30);
            let raw = ExoMailbox {
                exchange_guid: guid,
                display_name: Some(format!("User {i} Example")),
                primary_smtp: Some(format!("user.{i}@{domain}")),
                user_principal_name: Some(format!("user.{i}@{domain}")),
                when_soft_deleted: Utc
                    .timestamp_millis_opt(1_640_995_200_000 + (mix(r + 7) % 94_608_000_000) as i64)
                    .single(),
                is_inactive: Some(true),
                litigation_hold: r % 10 < 4,
                in_place_holds,
                compliance_tag_hold: r.is_multiple_of(10),
                auto_expanding_archive: r.is_multiple_of(50),
                archive_status: Some(if r % 10 < 3 { "Active" } else { "None" }.into()),
                total_item_size_bytes: Some(size),
                item_count: Some(size / 75_000),
                company: Some(company.into()),
                department: Some("Finance".into()),
                license: Some(["E3", "E5", "F3"][(r % 3) as usize].into()),
                ..ExoMailbox::default()
            };
            InactiveMailbox::build(raw, &cfg, now)
        })
        .collect()
}

fn fresh_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(&dir.path().join("imm-daemon.db")).expect("database opens");
    (dir, store)
}

fn upsert(store: &mut Store, ms: &[InactiveMailbox]) -> usize {
    store
        .write(|tx| tx.upsert_mailboxes(ms))
        .expect("upsert succeeds")
}

/// `insert`: `ms` upserted into a fresh database each iteration.
fn bench_fresh_insert(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    ms: &[InactiveMailbox],
) {
    g.bench_function("insert", |b| {
        b.iter_batched(
            fresh_store,
            |(dir, mut store)| {
                black_box(upsert(&mut store, ms));
                // Returned so that closing the database is not timed.
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
}

fn upsert_10k(c: &mut Criterion) {
    let ms = mailboxes(10_000);
    let mut g = c.benchmark_group("upsert_10k");
    g.throughput(Throughput::Elements(ms.len() as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(15));
    bench_fresh_insert(&mut g, &ms);
    g.bench_function("insert_checkpoint", |b| {
        b.iter_batched(
            fresh_store,
            |(dir, mut store)| {
                black_box(upsert(&mut store, &ms));
                black_box(store.checkpoint().expect("checkpoint succeeds"));
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    let (_dir, mut store) = fresh_store();
    upsert(&mut store, &ms);
    g.bench_function("update", |b| b.iter(|| black_box(upsert(&mut store, &ms))));
    g.finish();
}

fn upsert_1m(c: &mut Criterion) {
    let ms = mailboxes(1_000_000);
    let mut g = c.benchmark_group("upsert_1m");
    g.throughput(Throughput::Elements(ms.len() as u64));
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(60));
    bench_fresh_insert(&mut g, &ms);
    g.finish();
}

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read");
    g.sample_size(30);
    let (_dir10k, mut store10k) = fresh_store();
    upsert(&mut store10k, &mailboxes(10_000));
    g.bench_function("all_10k", |b| {
        b.iter(|| black_box(store10k.all_mailboxes().expect("read")))
    });
    let (_dir100k, mut store100k) = fresh_store();
    upsert(&mut store100k, &mailboxes(100_000));
    let filter = MailboxFilter {
        // Matches user 4242 and 42420..42429: 11 rows.
        text: Some("User 4242".into()),
        ..MailboxFilter::default()
    };
    g.bench_function("search_100k", |b| {
        b.iter(|| black_box(store100k.mailboxes(&filter).expect("search")))
    });
    let one_percent = MailboxFilter {
        // Users 42, 420..429, 4200..4299 and 42000..42999: 1,111 rows (1.1 %).
        text: Some("User 42".into()),
        ..MailboxFilter::default()
    };
    g.bench_function("search_1pct_100k", |b| {
        b.iter(|| black_box(store100k.mailboxes(&one_percent).expect("search")))
    });
    let now = now();
    g.bench_function("stats_10k", |b| {
        b.iter(|| black_box(store10k.mailbox_tallies(now).expect("stats")))
    });
    g.bench_function("stats_100k", |b| {
        b.iter(|| black_box(store100k.mailbox_tallies(now).expect("stats")))
    });
    // Tallies kept by a `stats` an hour earlier, moved forward to now and summed (the
    // hour moves a few mailboxes to another band, so the kept summary cannot answer).
    let cfg = imm_daemon::config::InventoryConfig::default();
    let keep_at = |store: &mut Store, at| {
        let got = stats_keeping(store, at, &cfg);
        assert!(got.keep.is_some(), "something kept");
    };
    // Runs `stats` at now, from the kept tallies, and checks whether the kept summary
    // answered.
    let bench_stats = |g: &mut criterion::BenchmarkGroup<_>, name, store: &Store, summary| {
        g.bench_function(name, |b| {
            b.iter(|| {
                let got = store
                    .cached_mailbox_summary(now, true, &cfg)
                    .expect("stats");
                assert!(got.from_cache && got.from_kept_summary == summary);
                black_box(got.summary)
            })
        });
    };
    for (name, store) in [
        ("stats_kept_10k", &mut store10k),
        ("stats_kept_100k", &mut store100k),
    ] {
        keep_at(store, now - chrono::Duration::hours(1));
        bench_stats(&mut g, name, store, false);
    }
    // The summary kept by a `stats` at the same instant: nothing moved since.
    keep_at(&mut store10k, now);
    bench_stats(&mut g, "stats_kept_summary_10k", &store10k, true);
    g.finish();
    written(c, &mut store100k, now, &cfg);
}

/// Runs a `stats` at `at` and keeps what it offers; returns its answer.
fn stats_keeping(
    store: &mut Store,
    at: DateTime<Utc>,
    cfg: &imm_daemon::config::InventoryConfig,
) -> imm_daemon::store::CachedSummary {
    let got = store.cached_mailbox_summary(at, true, cfg).expect("stats");
    if let Some(keep) = &got.keep {
        assert!(
            store
                .write(|tx| tx.keep_mailbox_tallies(keep))
                .expect("kept")
        );
    }
    got
}

/// New sizes for the first 100 cached mailboxes, as the statistics phase writes a batch:
/// `round` 0 and 1 give different sizes, so each write changes every row it names.
fn sizes_of_100(round: u64) -> Vec<imm_daemon::store::StatisticsResult> {
    mailboxes(100)
        .into_iter()
        .enumerate()
        .map(|(i, m)| imm_daemon::store::StatisticsResult {
            identity: m.identity,
            size_bytes: Some((i as u64 + 1) * (1 << 20) * (round + 1)),
            item_count: Some(10),
        })
        .collect()
}

/// `write/*`: the write of 100 sizes into the 100,000-mailbox cache, with tallies kept
/// (the write folds its changes into them and sums their summary again:
/// `sizes_100_kept_100k`) and with none kept (`sizes_100_unkept_100k`: the triggers queue
/// nothing); and `read/stats_written_100k`, the `stats` right after such a write, which
/// reads the summary the write kept.
fn written(
    c: &mut Criterion,
    store: &mut Store,
    now: DateTime<Utc>,
    cfg: &imm_daemon::config::InventoryConfig,
) {
    let batches = [sizes_of_100(0), sizes_of_100(1)];
    let mut round = 0;
    let mut write = |store: &mut Store| {
        round += 1;
        store
            .write(|tx| tx.store_statistics(&batches[round % 2], now))
            .expect("sizes written");
    };
    stats_keeping(store, now, cfg);
    let mut g = c.benchmark_group("write");
    g.sample_size(30);
    g.bench_function("sizes_100_kept_100k", |b| b.iter(|| write(store)));
    g.finish();
    assert!(
        stats_keeping(store, now, cfg).from_cache,
        "the writes carried the tallies"
    );
    let mut g = c.benchmark_group("read");
    g.sample_size(30);
    g.bench_function("stats_written_100k", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                write(store);
                let start = std::time::Instant::now();
                let got = store.cached_mailbox_summary(now, true, cfg).expect("stats");
                took += start.elapsed();
                assert!(got.from_cache && got.from_kept_summary);
                black_box(got.summary);
            }
            took
        })
    });
    g.finish();
    rusqlite::Connection::open(store.path())
        .and_then(|db| {
            db.execute(
                "UPDATE mailbox_tally_state SET cached_generation = NULL",
                [],
            )
        })
        .expect("tallies set aside");
    let mut g = c.benchmark_group("write");
    g.sample_size(30);
    g.bench_function("sizes_100_unkept_100k", |b| b.iter(|| write(store)));
    g.finish();
}

criterion_group!(benches, upsert_10k, upsert_1m, read);
criterion_main!(benches);
