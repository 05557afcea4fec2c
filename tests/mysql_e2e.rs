//! MariaDB → lake on S3 → ClickHouse with watermark capture, end to end: the same
//! flow as tests/postgres_e2e.rs, with a `TIMESTAMP` cursor (an instant, written by
//! a session in `+05:00`) and a `DATETIME` partition column (a wall-clock value).

mod common;
mod common_mysql;

use arrow::datatypes::{DataType, TimeUnit};
use common::*;
use common_mysql::MyDb;

const SOURCE_ROWS: &str = "SELECT id, user_id, amount, status, \
     DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s.%f'), \
     DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s.%f') \
     FROM transactions ORDER BY id";

const SOURCE_PARTITIONS: &str = "SELECT DATE_FORMAT(created_at, '%Y%m%d'), COUNT(*) \
     FROM transactions GROUP BY 1 ORDER BY 1";

fn warehouse_rows(db: &str) -> String {
    format!(
        "SELECT id, user_id, amount, status, formatDateTime(created_at, '%Y-%m-%d %H:%i:%S.%f'), \
         formatDateTime(updated_at, '%Y-%m-%d %H:%i:%S.%f') FROM `{db}`.transactions ORDER BY id \
         SETTINGS output_format_decimal_trailing_zeros = 1"
    )
}

fn warehouse_partitions(db: &str) -> String {
    format!("SELECT _partition_id, count() FROM `{db}`.transactions GROUP BY 1 ORDER BY 1")
}

/// 600 rows over the last three days; 85 share the largest `updated_at`.
fn seed(db: &mut MyDb) {
    db.exec(
        "CREATE TABLE transactions (
            id BIGINT PRIMARY KEY,
            user_id INT NOT NULL,
            amount DECIMAL(12,2) NOT NULL,
            status VARCHAR(20),
            created_at DATETIME(6) NOT NULL,
            updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
    );
    db.exec(
        "CREATE TABLE run_base AS SELECT TIMESTAMP(DATE_FORMAT(NOW(), '%Y-%m-%d %H:%i:00')) - INTERVAL 1 HOUR AS base",
    );
    db.exec(
        "INSERT INTO transactions
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 600)
         SELECT n, n % 17, n * 1.25,
                CASE WHEN n % 5 = 0 THEN 'FAILED' WHEN n % 11 = 0 THEN NULL ELSE 'SUCCESS' END,
                TIMESTAMP(UTC_DATE()) - INTERVAL 2 DAY + INTERVAL (n * 5) MINUTE,
                (SELECT base FROM run_base) + INTERVAL (n % 7) SECOND
         FROM g",
    );
}

fn config(lake_prefix: &str, url: &str, ch_db: &str) -> String {
    format!(
        r#"
[lake]
url = "s3://{bucket}/{lake_prefix}"

[sources.app]
kind = "mysql"
url = "{url}"

[clickhouse]
url = "{ch}"
database = "{ch_db}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "transactions"
source = "app"
source_table = "transactions"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
retention_days = 30
batch_rows = 128
"#,
        bucket = s3_bucket(),
        ch = clickhouse_url(),
        ch_s3 = clickhouse_s3_endpoint(),
    )
}

async fn assert_warehouse_equals_source(db: &mut MyDb, ch_db: &str) {
    let source = db.lines(SOURCE_ROWS);
    let warehouse = ch_lines(&warehouse_rows(ch_db)).await;
    assert_eq!(source.len(), warehouse.len(), "row counts differ");
    for (s, w) in source.iter().zip(&warehouse) {
        assert_eq!(s, w, "first differing row");
    }
    assert_eq!(
        db.lines(SOURCE_PARTITIONS),
        ch_lines(&warehouse_partitions(ch_db)).await,
        "rows per partition"
    );
}

async fn assert_lake_equals_source(db: &mut MyDb, prefix: &str) {
    let batches = read_parquet_under(&s3_store(), &format!("{prefix}/transactions")).await;
    let schema = batches[0].schema();
    assert_eq!(
        schema.field_with_name("updated_at").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        "a TIMESTAMP column is an instant"
    );
    assert_eq!(
        schema.field_with_name("created_at").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, None),
        "a DATETIME column is a wall-clock value"
    );
    assert_eq!(
        schema.field_with_name("amount").unwrap().data_type(),
        &DataType::Decimal128(12, 2)
    );
    let mut ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    ids.sort();
    let source_ids: Vec<i64> = db
        .lines("SELECT id FROM transactions ORDER BY id")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        ids, source_ids,
        "ids in the lake (no duplicates, none missing)"
    );
}

fn run(cfg: &std::path::Path) -> Vec<String> {
    let out = sluice_run_ok(cfg);
    let line = out
        .lines()
        .find(|l| l.starts_with("transactions"))
        .unwrap_or_else(|| panic!("no report line: {out}"))
        .to_string();
    line.split_whitespace().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_first_load_incremental_and_noop_rerun() {
    let name = unique("my_e2e");
    let mut db = MyDb::create(&name);
    seed(&mut db);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config(&name, &db.url, &name));

    // 1. First run: full load.
    let numbers = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || run(&cfg)
    })
    .await
    .unwrap();
    assert_eq!(&numbers[1..4], &["600", "600", "0"], "{numbers:?}");
    assert_warehouse_equals_source(&mut db, &name).await;
    assert_lake_equals_source(&mut db, &name).await;

    // 2. New rows *at* the old watermark, updates, a row updated twice, an update
    //    in an older partition.
    db.exec(
        "INSERT INTO transactions
         WITH RECURSIVE g(n) AS (SELECT 601 UNION ALL SELECT n + 1 FROM g WHERE n < 610)
         SELECT n, 1, 10.00, 'SUCCESS', UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE,
                (SELECT base FROM run_base) + INTERVAL 6 SECOND FROM g",
    );
    db.exec(
        "UPDATE transactions SET amount = 999.99, status = 'REFUNDED',
                updated_at = (SELECT base FROM run_base) + INTERVAL 1 MINUTE WHERE id = 3;
         UPDATE transactions SET amount = 1,
                updated_at = (SELECT base FROM run_base) + INTERVAL 2 MINUTE WHERE id = 4;
         UPDATE transactions SET amount = 2,
                updated_at = (SELECT base FROM run_base) + INTERVAL 3 MINUTE WHERE id = 4;
         UPDATE transactions SET status = NULL,
                updated_at = (SELECT base FROM run_base) + INTERVAL 3 MINUTE WHERE id = 550",
    );
    let numbers = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || run(&cfg)
    })
    .await
    .unwrap();
    // read = 85 re-read boundary rows + 10 new + 3 updated; changed = 13; skipped = 85.
    assert_eq!(&numbers[1..4], &["98", "13", "85"], "{numbers:?}");
    assert_warehouse_equals_source(&mut db, &name).await;
    assert_lake_equals_source(&mut db, &name).await;

    // 3. Rerun without source changes: only the two boundary rows are re-read.
    let objects_before = list(&s3_store(), &format!("{name}/transactions")).await;
    let ch_before = ch_lines(&warehouse_rows(&name)).await;
    let numbers = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || run(&cfg)
    })
    .await
    .unwrap();
    assert_eq!(&numbers[1..4], &["2", "0", "2"], "{numbers:?}");
    assert_eq!(
        list(&s3_store(), &format!("{name}/transactions")).await,
        objects_before
    );
    assert_eq!(ch_lines(&warehouse_rows(&name)).await, ch_before);

    db.drop();
}
