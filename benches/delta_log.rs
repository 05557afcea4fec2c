//! Opening a lake table (reading its Delta log: the last checkpoint, the JSON
//! commits after it, sluice's position) after many commits, and one commit.
//! A table gets two commits per run with ClickHouse (files, then the final
//! position), so 1,000 commits are about 500 nights. Local folder lake.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::lake::manifest::{FileEntry, Manifest, PartitionEntry};
use sluice::lake::Lake;

const COMMITS: u64 = 1_000;

/// A lake in `dir` whose table `t` has `COMMITS` versions, each adding one
/// day's file (the files themselves are not needed to read the log).
fn lake_with_history(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Lake {
    let config: sluice::config::LakeConfig =
        toml::from_str(&format!("url = {:?}", dir.display().to_string())).expect("config");
    let lake = Lake::open(&config, dir).expect("lake");
    rt.block_on(async {
        let mut m = match lake.read_manifest("t").await.expect("read") {
            Some(m) => m,
            None => Manifest::new("t", "created_at", &["id".to_string()]),
        };
        for version in 1..=COMMITS {
            let day = format!(
                "2026-{:02}-{:02}",
                1 + (version / 28) % 12,
                1 + version % 28
            );
            let entry = m
                .partitions
                .entry(day.clone())
                .or_insert_with(PartitionEntry::default);
            entry.rows += 100;
            entry.files.push(FileEntry {
                path: format!("created_at_day={day}/part-{version}.parquet"),
                rows: 100,
                bytes: 4096,
            });
            m.version = version;
            m.run_id = format!("run-{version}");
            lake.write_manifest(&m).await.expect("commit");
        }
    });
    lake
}

fn open(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = lake_with_history(&rt, dir.path());
    let mut group = c.benchmark_group("delta_log");
    group.bench_function(format!("open a table after {COMMITS} commits"), |b| {
        b.iter(|| {
            let fresh = lake.clone();
            rt.block_on(fresh.read_manifest("t"))
                .expect("read")
                .expect("table")
        })
    });
    group.bench_function("one commit (one file added)", |b| {
        let mut m = rt
            .block_on(lake.read_manifest("t"))
            .expect("read")
            .expect("table");
        b.iter(|| {
            m.version += 1;
            let n = m.version;
            let entry = m.partitions.entry("2027-01-01".into()).or_default();
            entry.rows += 1;
            entry.files.push(FileEntry {
                path: format!("created_at_day=2027-01-01/part-{n}.parquet"),
                rows: 1,
                bytes: 10,
            });
            rt.block_on(lake.write_manifest(&m)).expect("commit")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(10));
    targets = open
}
criterion_main!(benches);
