//! Watermark capture per batch: `WatermarkTracker::observe` reads the cursor and
//! formats every row's key (to recognise boundary rows on the next run).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::capture::cursor::{key_strings, CursorColumn, WatermarkTracker};

#[allow(dead_code)] // each benchmark uses part of it
mod support;
use support::{transactions, BATCH_ROWS};

fn observe(c: &mut Criterion) {
    let batch = transactions(0, BATCH_ROWS);
    let cursor = CursorColumn::new(&batch.schema(), "updated_at").expect("cursor column");
    let mut group = c.benchmark_group("watermark");
    group.throughput(Throughput::Elements(BATCH_ROWS as u64));

    group.bench_function("observe 64K rows, first run", |b| {
        b.iter_batched(
            || WatermarkTracker::new(cursor.clone(), vec![0], None, &[]),
            |mut tracker| tracker.observe(batch.clone()).expect("observe"),
            BatchSize::SmallInput,
        )
    });

    // An incremental run: the previous run stopped at the 1,000th row's cursor with
    // 1,000 boundary keys, which are read again and dropped.
    let mut first = WatermarkTracker::new(cursor.clone(), vec![0], None, &[]);
    first.observe(batch.slice(0, 1_000)).expect("observe");
    let (previous, _) = first.finish();
    let boundary: Vec<Vec<String>> = (0..1_000).map(|i| vec![i.to_string()]).collect();
    group.bench_function(
        "observe 64K rows, after a watermark with 1K boundary keys",
        |b| {
            b.iter_batched(
                || WatermarkTracker::new(cursor.clone(), vec![0], previous, &boundary),
                |mut tracker| tracker.observe(batch.clone()).expect("observe"),
                BatchSize::SmallInput,
            )
        },
    );

    group.bench_function("key_strings 64K rows (Int64 key)", |b| {
        b.iter(|| key_strings(&batch, &[0]).expect("keys"))
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
