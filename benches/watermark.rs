//! Watermark capture per batch: `WatermarkTracker::observe` reads the cursor,
//! and keys and hashes the rows the next run reads again (those at the
//! watermark, or within `lookback` below it) to drop them when unchanged.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::capture::cursor::{CursorColumn, TrackerStart, WatermarkTracker};

#[allow(dead_code)] // each benchmark uses part of it
mod support;
use support::{transactions, BATCH_ROWS};

fn observe(c: &mut Criterion) {
    let batch = transactions(0, BATCH_ROWS);
    let cursor = CursorColumn::new(&batch.schema(), "updated_at").expect("cursor column");
    let mut group = c.benchmark_group("watermark");
    group.throughput(Throughput::Elements(BATCH_ROWS as u64));

    let fresh = || TrackerStart {
        previous: None,
        seen: &[],
        legacy_boundary: &[],
        lookback: 0,
        horizon: None,
    };
    group.bench_function("observe 64K rows, first run", |b| {
        b.iter_batched(
            || WatermarkTracker::new(cursor.clone(), vec![0], fresh()),
            |mut tracker| tracker.observe(batch.clone()).expect("observe"),
            BatchSize::SmallInput,
        )
    });

    // An incremental run: the previous run read the first 1,000 rows; those it
    // remembered are read again and dropped.
    let mut first = WatermarkTracker::new(cursor.clone(), vec![0], fresh());
    first.observe(batch.slice(0, 1_000)).expect("observe");
    let end = first.finish();
    group.bench_function(
        "observe 64K rows, after a watermark with its remembered rows",
        |b| {
            b.iter_batched(
                || {
                    WatermarkTracker::new(
                        cursor.clone(),
                        vec![0],
                        TrackerStart {
                            previous: end.watermark,
                            seen: &end.seen,
                            ..fresh()
                        },
                    )
                },
                |mut tracker| tracker.observe(batch.clone()).expect("observe"),
                BatchSize::SmallInput,
            )
        },
    );

    // lookback wider than the batch's cursor range: every row is keyed and hashed.
    group.bench_function("observe 64K rows, every row within lookback", |b| {
        b.iter_batched(
            || {
                WatermarkTracker::new(
                    cursor.clone(),
                    vec![0],
                    TrackerStart {
                        lookback: i64::MAX / 4,
                        ..fresh()
                    },
                )
            },
            |mut tracker| tracker.observe(batch.clone()).expect("observe"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = observe
}
criterion_main!(benches);
