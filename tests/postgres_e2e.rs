//! PostgreSQL → lake on S3 → ClickHouse, end to end on the real services.

mod common;

use common::*;

const SOURCE_ROWS: &str = "SELECT id::text, user_id::text, trim_scale(amount)::text, status, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') \
     FROM transactions t ORDER BY t.id";

const SOURCE_PARTITIONS: &str =
    "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYYMMDD'), count(*)::text \
     FROM transactions GROUP BY 1 ORDER BY 1";

/// The source table of both tests.
const CREATE_TRANSACTIONS: &str = "CREATE TABLE transactions (
     id bigint PRIMARY KEY,
     user_id int NOT NULL,
     amount numeric(12,2) NOT NULL,
     status text,
     created_at timestamptz NOT NULL,
     updated_at timestamptz NOT NULL);";

fn warehouse_rows(db: &str) -> String {
    format!(
        "SELECT id, user_id, amount, status, formatDateTime(created_at, '%Y-%m-%d %H:%i:%S.%f'), \
         formatDateTime(updated_at, '%Y-%m-%d %H:%i:%S.%f') FROM `{db}`.transactions ORDER BY id"
    )
}

fn warehouse_partitions(db: &str) -> String {
    format!("SELECT _partition_id, count() FROM `{db}`.transactions GROUP BY 1 ORDER BY 1")
}

/// Creates `transactions` with 600 rows over the last three days; 85 of them share
/// the largest `updated_at`, so the first watermark has a wide boundary.
async fn seed(pg: &PgDb) {
    pg.exec(&format!(
        "{CREATE_TRANSACTIONS}
         CREATE TABLE run_base AS SELECT date_trunc('minute', now()) - interval '1 hour' AS base;
         INSERT INTO transactions
         SELECT g, g % 17, (g * 1.25)::numeric(12,2),
                CASE WHEN g % 5 = 0 THEN 'FAILED' WHEN g % 11 = 0 THEN NULL ELSE 'SUCCESS' END,
                date_trunc('day', now()) - interval '2 days' + g * interval '5 minutes',
                (SELECT base FROM run_base) + (g % 7) * interval '1 second'
         FROM generate_series(1, 600) g;"
    ))
    .await;
}

fn config(lake_prefix: &str, pg_url: &str, ch_db: &str) -> String {
    format!(
        r#"
[lake]
url = "s3://{bucket}/{lake_prefix}"

[sources.app]
kind = "postgres"
url = "{pg_url}"

[clickhouse]
url = "{ch}"
database = "{ch_db}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "transactions"
source = "app"
source_table = "public.transactions"
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

async fn assert_warehouse_equals_source(pg: &PgDb, ch_db: &str) {
    let source = pg.lines(SOURCE_ROWS).await;
    let warehouse = ch_lines(&warehouse_rows(ch_db)).await;
    assert_eq!(source.len(), warehouse.len(), "row counts differ");
    for (s, w) in source.iter().zip(&warehouse) {
        assert_eq!(s, w, "first differing row");
    }
    assert_eq!(
        pg.lines(SOURCE_PARTITIONS).await,
        ch_lines(&warehouse_partitions(ch_db)).await,
        "rows per partition"
    );
}

async fn assert_lake_equals_source(pg: &PgDb, prefix: &str) {
    let store = s3_store();
    let batches = read_parquet_under(&store, &format!("{prefix}/transactions")).await;
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
    let source_ids: Vec<i64> = pg
        .lines("SELECT id::text FROM transactions t ORDER BY t.id")
        .await
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        ids, source_ids,
        "ids in the lake's Parquet files (no duplicates, none missing)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn first_load_incremental_and_noop_rerun() {
    let name = unique("e2e");
    let pg = PgDb::create(&name).await;
    seed(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config(&name, &pg.url, &name));

    // 1. First run: full load.
    let out = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || sluice_run_ok(&cfg)
    })
    .await
    .unwrap();
    assert!(out.contains("transactions"), "{out}");
    assert_warehouse_equals_source(&pg, &name).await;
    assert_lake_equals_source(&pg, &name).await;
    let m1 = read_manifest(&name).await;
    assert_eq!(m1["seen_rows"].as_array().unwrap().len(), 85);
    assert!(m1["pending_warehouse"].as_array().unwrap().is_empty());

    // 2. Changes: new rows *at* the old watermark (arriving after the run), an
    //    update, a row updated twice, an update in an older partition.
    pg.exec(
        "INSERT INTO transactions
         SELECT g, 1, 10.00, 'SUCCESS', now() - interval '1 minute',
                (SELECT base FROM run_base) + interval '6 seconds'
         FROM generate_series(601, 610) g;
         UPDATE transactions SET amount = 999.99, status = 'REFUNDED',
                updated_at = (SELECT base FROM run_base) + interval '1 minute' WHERE id = 3;
         UPDATE transactions SET amount = 1, updated_at = (SELECT base FROM run_base) + interval '2 minutes' WHERE id = 4;
         UPDATE transactions SET amount = 2, updated_at = (SELECT base FROM run_base) + interval '3 minutes' WHERE id = 4;
         UPDATE transactions SET status = NULL,
                updated_at = (SELECT base FROM run_base) + interval '3 minutes' WHERE id = 550;",
    )
    .await;
    let out = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || sluice_run_ok(&cfg)
    })
    .await
    .unwrap();
    assert_warehouse_equals_source(&pg, &name).await;
    assert_lake_equals_source(&pg, &name).await;
    let line = out
        .lines()
        .find(|l| l.starts_with("transactions"))
        .unwrap()
        .to_string();
    let numbers: Vec<&str> = line.split_whitespace().collect();
    // read = 85 re-read boundary rows + 10 new + 3 updated; changed = 13; skipped = 85.
    assert_eq!(&numbers[1..4], &["98", "13", "85"], "{out}");
    let m2 = read_manifest(&name).await;
    assert!(m2["version"].as_u64() > m1["version"].as_u64());

    // 3. Rerun without source changes: nothing changes anywhere.
    let objects_before = list(&s3_store(), &format!("{name}/transactions")).await;
    let ch_before = ch_lines(&warehouse_rows(&name)).await;
    let out = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || sluice_run_ok(&cfg)
    })
    .await
    .unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with("transactions"))
        .unwrap()
        .to_string();
    let numbers: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &numbers[1..4],
        &["2", "0", "2"],
        "only the two boundary rows are re-read: {out}"
    );
    assert_eq!(read_manifest(&name).await, m2, "manifest unchanged");
    assert_eq!(
        list(&s3_store(), &format!("{name}/transactions")).await,
        objects_before
    );
    assert_eq!(ch_lines(&warehouse_rows(&name)).await, ch_before);

    pg.drop().await;
}

async fn read_manifest(prefix: &str) -> serde_json::Value {
    s3_table_state(prefix, "transactions").await
}

/// `clickhouse_partition = "month"` on a watermark table: ClickHouse holds one
/// partition per month while the lake stays daily, and an update to one day
/// replaces its month without losing or doubling the month's other days.
#[tokio::test(flavor = "multi_thread")]
async fn month_partitions_keep_the_other_days_of_the_month() {
    let name = unique("e2emonth");
    let pg = PgDb::create(&name).await;
    // 600 rows, one every 2 hours from 2026-09-20 02:00 to 2026-11-09 00:00: 51 days
    // over three months.
    pg.exec(&format!(
        "{CREATE_TRANSACTIONS}
         INSERT INTO transactions
         SELECT g, g % 17, (g * 1.25)::numeric(12,2), 'SUCCESS',
                timestamptz '2026-09-20 00:00:00+00' + g * interval '2 hours',
                timestamptz '2026-11-30 00:00:00+00' + (g % 7) * interval '1 second'
         FROM generate_series(1, 600) g;"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&name, &pg.url, &name).replace(
        "retention_days = 30\n",
        "clickhouse_partition = \"month\"\n",
    );
    assert!(cfg.contains("month"));
    let cfg = write_config(&dir, &cfg);
    let months = |db: &str| {
        format!("SELECT _partition_id, count() FROM `{db}`.transactions GROUP BY 1 ORDER BY 1")
    };
    const SOURCE_MONTHS: &str = "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYYMM'), \
         count(*)::text FROM transactions GROUP BY 1 ORDER BY 1";
    let run = |cfg: std::path::PathBuf| tokio::task::spawn_blocking(move || sluice_run_ok(&cfg));

    run(cfg.clone()).await.unwrap();
    assert_eq!(
        ch_lines(&months(&name)).await,
        pg.lines(SOURCE_MONTHS).await,
        "rows per ClickHouse month partition"
    );
    assert_eq!(
        ch_lines(&months(&name)).await.len(),
        3,
        "September, October, November"
    );
    assert_eq!(
        pg.lines(SOURCE_ROWS).await,
        ch_lines(&warehouse_rows(&name)).await
    );
    let lake_days = read_manifest(&name).await["partitions"]
        .as_object()
        .unwrap()
        .len();
    let source_days = pg
        .lines(
            "SELECT count(DISTINCT (created_at AT TIME ZONE 'UTC')::date)::text FROM transactions",
        )
        .await;
    assert_eq!(
        vec![lake_days.to_string()],
        source_days,
        "the lake stays partitioned by day"
    );
    assert!(lake_days > 50);

    // One row changed on 2026-10-05 and a new row on 2026-10-06: October is
    // rebuilt from those two lake days and its 29 other days in ClickHouse.
    pg.exec(
        "UPDATE transactions SET amount = 7.77, status = 'REFUNDED',
                updated_at = timestamptz '2026-12-01 00:00:00+00' WHERE id = 186;
         INSERT INTO transactions VALUES (601, 1, 1.00, 'SUCCESS',
                timestamptz '2026-10-06 12:00:00+00', timestamptz '2026-12-01 00:00:01+00');",
    )
    .await;
    assert_eq!(
        pg.lines("SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM transactions WHERE id = 186")
            .await,
        vec!["2026-10-05".to_string()]
    );
    run(cfg.clone()).await.unwrap();
    assert_eq!(
        pg.lines(SOURCE_ROWS).await,
        ch_lines(&warehouse_rows(&name)).await,
        "every row once, the update applied"
    );
    assert_eq!(
        ch_lines(&months(&name)).await,
        pg.lines(SOURCE_MONTHS).await
    );

    // A rerun changes nothing.
    let before = ch_lines(&warehouse_rows(&name)).await;
    run(cfg.clone()).await.unwrap();
    assert_eq!(ch_lines(&warehouse_rows(&name)).await, before);

    pg.drop().await;
}
