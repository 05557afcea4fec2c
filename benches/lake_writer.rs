//! The lake side of a batch: cutting it into days (`split_by_day`) and encoding it
//! as Parquet with the lake's writer settings (zstd 3, page statistics).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use parquet::arrow::ArrowWriter;
use sluice::lake::writer::{split_by_day, writer_properties};

#[allow(dead_code)] // each benchmark uses part of it
mod support;
use support::{transactions, BATCH_ROWS, TRANSACTION_TIME};

fn split(c: &mut Criterion) {
    let batch = transactions(0, BATCH_ROWS);
    let days = split_by_day(&batch, TRANSACTION_TIME, "transaction_time")
        .expect("split")
        .len();
    let mut group = c.benchmark_group("lake_writer");
    group.throughput(Throughput::Elements(BATCH_ROWS as u64));
    group.bench_function(format!("split_by_day 64K rows ({days} days)"), |b| {
        b.iter(|| split_by_day(&batch, TRANSACTION_TIME, "transaction_time").expect("split"))
    });
    // What the FileRoller does per batch, minus the object store: encode and
    // compress into an in-memory file, closed after each batch.
    group.bench_function("parquet encode 64K rows (zstd 3, page stats)", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(4 << 20);
            let mut writer =
                ArrowWriter::try_new(&mut out, batch.schema(), Some(writer_properties(262_144)))
                    .expect("writer");
            writer.write(&batch).expect("write");
            writer.close().expect("close");
            out.len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = split
}
criterion_main!(benches);
