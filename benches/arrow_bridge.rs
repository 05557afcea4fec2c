//! The arrow 56 → 59 bridge on a source-sized batch: it moves buffers through the
//! C Data Interface, so its cost should be per column, not per row (microseconds).

use std::sync::Arc;
use std::time::Duration;

use arrow56::array::{
    ArrayRef, Decimal128Array, Int64Array, LargeStringArray, TimestampMicrosecondArray,
};
use arrow56::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow56::record_batch::RecordBatch;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::source::arrow_bridge::into_arrow;

const BATCH_ROWS: usize = 64 * 1024;

/// A batch as connectorx (arrow 56) builds it for the benchmark's `transactions`
/// table: bigint → Int64, numeric → Decimal128(38, 10), text → LargeUtf8,
/// timestamptz → Timestamp(µs, "+00:00").
fn connectorx_batch(rows: usize) -> RecordBatch {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("merchant_id", DataType::Int64, false),
        Field::new("amount", DataType::Decimal128(38, 10), false),
        Field::new("status", DataType::LargeUtf8, false),
        Field::new("transaction_time", ts(), false),
        Field::new("updated_at", ts(), false),
    ]));
    let ids: Vec<i64> = (0..rows as i64).collect();
    let times: Vec<i64> = ids
        .iter()
        .map(|id| 1_767_225_600_000_000 + id * 2_592_000)
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(Int64Array::from_iter_values(
            ids.iter().map(|i| i % 100_000),
        )),
        Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 5_000))),
        Arc::new(
            Decimal128Array::from_iter_values(ids.iter().map(|i| i128::from(*i) * 1_000_000))
                .with_precision_and_scale(38, 10)
                .expect("valid decimal type"),
        ),
        Arc::new(LargeStringArray::from_iter_values(ids.iter().map(|i| {
            if i % 5 == 3 {
                "FAILED"
            } else {
                "SUCCESS"
            }
        }))),
        Arc::new(TimestampMicrosecondArray::from(times.clone()).with_timezone("+00:00")),
        Arc::new(TimestampMicrosecondArray::from(times).with_timezone("+00:00")),
    ];
    RecordBatch::try_new(schema, columns).expect("columns match the schema")
}

fn bridge(c: &mut Criterion) {
    let batch = connectorx_batch(BATCH_ROWS);
    let mut group = c.benchmark_group("arrow_bridge");
    group.throughput(Throughput::Elements(BATCH_ROWS as u64));
    // `into_arrow` takes the batch by value; a clone shares the buffers (Arc), so
    // the setup copies no data and the measured time is the bridge alone.
    group.bench_function("into_arrow 64K rows x 7 cols", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| into_arrow(batch).expect("bridge"),
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
        .measurement_time(Duration::from_secs(2));
    targets = bridge
}
criterion_main!(benches);
