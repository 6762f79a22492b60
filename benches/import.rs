//! Import benchmarks on a generated 10,000-record `Get-Mailbox -InactiveMailboxOnly`
//! export (the generator of `examples/gen_export.rs`, about 150 properties per record).
//!
//! - `parse_export/json_10k`: `imm_daemon::import::parse_export` of the ConvertTo-Json
//!   text, no database (the streaming reader, over the text in memory).
//! - `parse_export/csv_10k`: the same records as Export-Csv.
//! - `pipeline/json_10k_snapshot`: what `mailboxes import FILE` does after start-up, in
//!   process (`imm_daemon::sync::load_export`): read and parse the file on one thread,
//!   build the inventory rows and stage them on the other, then in one transaction diff
//!   against the cache, upsert and audit, into a database that already holds the same
//!   10,000 mailboxes.
//!
//! Run with `cargo bench --bench import`.

use std::hint::black_box;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imm_daemon::config::InventoryConfig;
use imm_daemon::import::parse_export;
use imm_daemon::inventory::RemovalGuard;
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

/// Read, parse, build, stage and snapshot-upsert, as `mailboxes import` does after
/// start-up.
fn import_into(store: &mut Store, file: &std::path::Path, cfg: &InventoryConfig) -> usize {
    let now = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
    let guard = RemovalGuard {
        max_share: 20,
        allow: false,
    };
    let loaded = imm_daemon::sync::load_export(store, cfg, file, false, guard, now)
        .expect("import succeeds");
    assert_eq!(loaded.removed, 0);
    loaded.imported
}

fn pipeline(c: &mut Criterion) {
    let cfg = config();
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("export-10k.json");
    std::fs::write(&file, export(false)).expect("export written");
    let mut store = Store::open(&dir.path().join("imm-daemon.db")).expect("database opens");
    import_into(&mut store, &file, &cfg);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(RECORDS));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(30));
    g.bench_function("json_10k_snapshot", |b| {
        b.iter(|| black_box(import_into(&mut store, &file, &cfg)))
    });
    g.finish();
}

criterion_group!(benches, parse, pipeline);
criterion_main!(benches);
