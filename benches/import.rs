//! Import benchmarks on a generated 10,000-record `Get-Mailbox -InactiveMailboxOnly`
//! export (the generator of `examples/gen_export.rs`, about 150 properties per record).
//!
//! - `parse_export/json_10k`: `imm_daemon::import::parse_export` of the ConvertTo-Json
//!   text, no database.
//! - `parse_export/csv_10k`: the same records as Export-Csv.
//! - `pipeline/json_10k_snapshot`: what `mailboxes import FILE` does after start-up, in
//!   process: parse, build the inventory rows, and in one transaction diff against the
//!   cache and upsert, into a database that already holds the same 10,000 mailboxes.
//!
//! Run with `cargo bench --bench import`.

use std::hint::black_box;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imm_daemon::config::InventoryConfig;
use imm_daemon::import::parse_export;
use imm_daemon::inventory::InactiveMailbox;
use imm_daemon::store::Store;

mod common;
use common::config;

#[allow(dead_code)]
#[path = "../examples/gen_export.rs"]
mod gen_export;

const RECORDS: u64 = 10_000;

fn export(csv: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    gen_export::generate(RECORDS, csv, &mut bytes).expect("writing to memory");
    bytes
}

fn parse(c: &mut Criterion) {
    let cfg = config();
    let mut g = c.benchmark_group("parse_export");
    g.throughput(Throughput::Elements(RECORDS));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(40));
    for (name, csv) in [("json_10k", false), ("csv_10k", true)] {
        let bytes = export(csv);
        eprintln!("{name}: {} bytes", bytes.len());
        g.bench_function(name, |b| {
            b.iter(|| {
                let e = parse_export(black_box(&bytes), &cfg).expect("export parses");
                assert_eq!(e.mailboxes.len() as u64, RECORDS);
                e
            })
        });
    }
    g.finish();
}

/// Parse, build and snapshot-upsert, as `mailboxes import` does after start-up.
fn import_into(store: &mut Store, bytes: &[u8], cfg: &InventoryConfig) -> usize {
    let now = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
    let export = parse_export(bytes, cfg).expect("export parses");
    let ms: Vec<InactiveMailbox> = export
        .mailboxes
        .into_iter()
        .map(|raw| InactiveMailbox::build(raw, cfg, now))
        .collect();
    store
        .write(|tx| {
            let removed = tx.remove_absent_mailboxes(&ms, &serde_json::Value::Null, now)?;
            assert_eq!(removed, 0);
            tx.upsert_mailboxes(&ms)
        })
        .expect("upsert succeeds")
}

fn pipeline(c: &mut Criterion) {
    let cfg = config();
    let bytes = export(false);
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut store = Store::open(&dir.path().join("imm-daemon.db")).expect("database opens");
    import_into(&mut store, &bytes, &cfg);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(RECORDS));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(30));
    g.bench_function("json_10k_snapshot", |b| {
        b.iter(|| black_box(import_into(&mut store, &bytes, &cfg)))
    });
    g.finish();
}

criterion_group!(benches, parse, pipeline);
criterion_main!(benches);
