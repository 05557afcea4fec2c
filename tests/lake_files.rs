//! The Parquet files analysts get: sized by `target_file_bytes` and
//! `row_group_rows`, rows sorted by the key within each row group (declared in
//! the metadata), column statistics and a page index, timestamps in UTC with the
//! zone in the Arrow type.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use common::*;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::{PageIndexPolicy, SortingColumn};

/// Day 2026-11-24 has `BIG` rows, 2026-11-25 has 50; ids are shuffled against
/// the creation time, so the source's order (by `created_at`) is not the key's.
const BIG: i64 = 120_000;

async fn seed(pg: &PgDb) {
    pg.exec(&format!(
        "CREATE TABLE events (
            id bigint PRIMARY KEY,
            payload text NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL);
         INSERT INTO events
         SELECT (g * 7919) % {BIG}, md5(g::text) || md5((g + 1)::text),
                timestamptz '2026-11-24 00:00:00+00' + g * interval '700 milliseconds',
                timestamptz '2026-11-26 00:00:00+00'
         FROM generate_series(0, {BIG} - 1) g;
         INSERT INTO events
         SELECT {BIG} + (g * 13) % 50, md5(g::text),
                timestamptz '2026-11-25 00:00:00+00' + g * interval '1 minute',
                timestamptz '2026-11-26 00:00:00+00'
         FROM generate_series(0, 49) g;"
    ))
    .await;
}

fn config(pg_url: &str) -> String {
    format!(
        r#"
[lake]
url = "lake"
target_file_bytes = 1048576
row_group_rows = 20000
# The day's folder holds only the live files: no replaced file kept.
keep_versions_days = 0

[sources.app]
kind = "postgres"
url = "{pg_url}"

[[table]]
name = "events"
source = "app"
source_table = "public.events"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
batch_rows = 7000
"#
    )
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files
}

/// Checks one file; returns its row count.
fn check_file(path: &Path) -> usize {
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new_with_options(File::open(path).unwrap(), options)
            .unwrap();
    let metadata = builder.metadata().clone();
    let schema = builder.schema().clone();
    let name = path.display();

    // UTC instants keep their zone in the Arrow type.
    assert_eq!(
        schema.field_with_name("created_at").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        "{name}"
    );
    // Page index (column and offset indexes) and chunk statistics.
    assert!(metadata.column_index().is_some(), "{name}: no column index");
    assert!(metadata.offset_index().is_some(), "{name}: no offset index");
    let id = schema.index_of("id").unwrap();
    for group in metadata.row_groups() {
        assert!(group.num_rows() <= 20_000, "{name}: {}", group.num_rows());
        let stats = group.column(id).statistics().expect("id statistics");
        assert!(stats.min_bytes_opt().is_some() && stats.max_bytes_opt().is_some());
        assert_eq!(
            group.sorting_columns().map(Vec::as_slice),
            Some(
                &[SortingColumn {
                    column_idx: id as i32,
                    descending: false,
                    nulls_first: true
                }][..]
            ),
            "{name}"
        );
    }

    // Each row group sorted by id.
    let row_groups = metadata.num_row_groups();
    let mut rows = 0;
    for group in 0..row_groups {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .with_row_groups(vec![group])
            .build()
            .unwrap();
        let mut ids = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch.column(id).as_primitive::<Int64Type>();
            assert_eq!(column.null_count(), 0);
            ids.extend(column.values().iter().copied());
        }
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{name}: row group {group} is not sorted by id"
        );
        rows += ids.len();
    }
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn file_sizes_order_and_metadata() {
    let name = unique("lake_files");
    let pg = PgDb::create(&name).await;
    seed(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config(&pg.url));
    tokio::task::block_in_place(|| sluice_run_ok(&cfg));
    let table = dir.path().join("lake/events");

    let big = files_of(&table.join("created_at_day=2026-11-24"));
    assert!(big.len() >= 3, "a big day is several files: {big:?}");
    let mut big_rows = 0;
    for file in &big {
        let bytes = std::fs::metadata(file).unwrap().len();
        // The roller closes a file once it reaches the target; a file overshoots
        // it by at most one row group.
        assert!(bytes < 3 * 1024 * 1024, "{}: {bytes} bytes", file.display());
        big_rows += check_file(file);
    }
    assert_eq!(big_rows as i64, BIG);

    let small = files_of(&table.join("created_at_day=2026-11-25"));
    assert_eq!(small.len(), 1, "a small day is one file: {small:?}");
    assert_eq!(check_file(&small[0]), 50);

    // Rows updated by a second run are merged into their day, still sorted.
    pg.exec("UPDATE events SET payload = 'changed', updated_at = now() WHERE id IN (3, 120007)")
        .await;
    tokio::task::block_in_place(|| sluice_run_ok(&cfg));
    let small = files_of(&table.join("created_at_day=2026-11-25"));
    assert_eq!(small.len(), 1, "{small:?}");
    assert_eq!(check_file(&small[0]), 50);

    pg.drop().await;
}
