//! Batches shaped like what the source hands the pipeline for the benchmark's
//! `transactions` table (see scripts/bench_e2e.sh): the Arrow types connectorx
//! produces for bigint, numeric, text and timestamptz columns.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Int64Array, LargeStringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

/// Rows per batch: the pipeline's default `batch_rows`.
pub const BATCH_ROWS: usize = 64 * 1024;

/// Microseconds between consecutive rows when 1,000,000 rows span 30 days, so a
/// batch covers about two days, as in the end-to-end benchmark.
pub const STEP_MICROS: i64 = 30 * 86_400_000_000 / 1_000_000;

/// Column index of `transaction_time`, the partition column.
pub const TRANSACTION_TIME: usize = 5;

/// `rows` rows starting at id `first_id`, ordered by `transaction_time`.
pub fn transactions(first_id: i64, rows: usize) -> RecordBatch {
    let utc = || Some(Arc::from("+00:00"));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("merchant_id", DataType::Int64, false),
        Field::new("amount", DataType::Decimal128(38, 10), false),
        Field::new("status", DataType::LargeUtf8, false),
        Field::new(
            "transaction_time",
            DataType::Timestamp(TimeUnit::Microsecond, utc()),
            false,
        ),
        Field::new(
            "updated_at",
            DataType::Timestamp(TimeUnit::Microsecond, utc()),
            false,
        ),
    ]));
    let ids: Vec<i64> = (first_id..first_id + rows as i64).collect();
    // 2026-01-01T00:00:00Z
    let start = 1_767_225_600_000_000i64;
    let times: Vec<i64> = ids.iter().map(|id| start + id * STEP_MICROS).collect();
    let statuses = ["SUCCESS", "SUCCESS", "SUCCESS", "FAILED", "PENDING"];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(Int64Array::from_iter_values(
            ids.iter().map(|id| 1 + id * 7919 % 100_000),
        )),
        Arc::new(Int64Array::from_iter_values(
            ids.iter().map(|id| 1 + id * 104_729 % 5_000),
        )),
        Arc::new(
            Decimal128Array::from_iter_values(
                ids.iter()
                    .map(|id| i128::from(id * 7_777 % 200_000) * 100_000_000),
            )
            .with_precision_and_scale(38, 10)
            .expect("valid decimal type"),
        ),
        Arc::new(LargeStringArray::from_iter_values(
            ids.iter().map(|id| statuses[*id as usize % statuses.len()]),
        )),
        Arc::new(TimestampMicrosecondArray::from(times.clone()).with_timezone("+00:00")),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                times.iter().zip(&ids).map(|(t, id)| t + id % 300_000_000),
            )
            .with_timezone("+00:00"),
        ),
    ];
    RecordBatch::try_new(schema, columns).expect("columns match the schema")
}
