//! `sluice query`: SQL over a lake built by `sluice run` from PostgreSQL, on a local
//! folder and on S3.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

/// 48 transactions, 16 on each of 2026-11-23, -24 and -25 (UTC), one every 90
/// minutes; every 4th has no status.
async fn seed(pg: &PgDb) {
    pg.exec(
        "CREATE TABLE transactions (
            id bigint PRIMARY KEY,
            user_id int NOT NULL,
            amount numeric(12,2) NOT NULL,
            status text,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL);
         INSERT INTO transactions
         SELECT g, g % 5, (g * 1.25)::numeric(12,2),
                CASE WHEN g % 4 = 0 THEN NULL WHEN g % 3 = 0 THEN 'FAILED' ELSE 'SUCCESS' END,
                timestamptz '2026-11-23 00:00:00+00' + g * interval '90 minutes',
                timestamptz '2026-11-26 12:00:00+00' + g * interval '1 second'
         FROM generate_series(0, 47) g;",
    )
    .await;
}

/// A pipeline without ClickHouse; `never_run` is configured but never run, so it
/// has no manifest.
fn config(lake_url: &str, pg_url: &str) -> String {
    format!(
        r#"
[lake]
url = "{lake_url}"

[sources.app]
kind = "postgres"
url = "{pg_url}"

[[table]]
name = "transactions"
source = "app"
source_table = "public.transactions"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
batch_rows = 10

[[table]]
name = "never_run"
source = "app"
source_table = "public.transactions"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
"#
    )
}

/// Runs the binary off the async workers (the PostgreSQL connection lives there).
fn run_sluice(args: &[&str]) -> Output {
    tokio::task::block_in_place(|| sluice(args, &[]))
}

fn load_transactions(cfg: &Path) {
    let out = run_sluice(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--table",
        "transactions",
    ]);
    assert!(
        out.status.success(),
        "sluice run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sluice query` with `args` before the SQL; panics with stderr unless it succeeds.
fn query_ok(cfg: &Path, args: &[&str], sql: &str) -> String {
    let out = query(cfg, args, sql);
    assert!(
        out.status.success(),
        "sluice query {sql:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn query(cfg: &Path, args: &[&str], sql: &str) -> Output {
    let mut all = vec!["query", "--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    all.push(sql);
    run_sluice(&all)
}

fn csv(cfg: &Path, sql: &str) -> String {
    query_ok(cfg, &["--format", "csv"], sql)
}

/// Asserts a failed query: exit code 6, `expected` in stderr, no panic output.
fn assert_query_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// The days of the files in the physical plan of `sql` (`created_at_day=DAY/…`).
fn scanned_days(cfg: &Path, sql: &str) -> Vec<String> {
    let plan = csv(cfg, &format!("EXPLAIN {sql}"));
    let physical = plan
        .split("physical_plan,")
        .nth(1)
        .unwrap_or_else(|| panic!("no physical plan in {plan}"));
    let mut days: Vec<String> = physical
        .split("created_at_day=")
        .skip(1)
        .map(|rest| rest[..10].to_string())
        .collect();
    days.sort();
    days
}

/// Live files per day in a manifest, as the days of those files.
fn manifest_days(manifest: &serde_json::Value, only: Option<&str>) -> Vec<String> {
    let mut days = Vec::new();
    for (day, partition) in manifest["partitions"].as_object().unwrap() {
        if only.is_none_or(|d| d == day) {
            for _ in partition["files"].as_array().unwrap() {
                days.push(day.clone());
            }
        }
    }
    days
}

const PER_DAY: &str = "SELECT created_at_day, count(*) AS n, \
     CAST(sum(amount) AS DECIMAL(12,2)) AS amount \
     FROM transactions GROUP BY 1 ORDER BY 1";

const PER_DAY_CSV: &str = "created_at_day,n,amount\n\
     2026-11-23,16,150.00\n\
     2026-11-24,16,470.00\n\
     2026-11-25,16,790.00\n";

const ONE_DAY: &str =
    "SELECT count(*) AS n FROM transactions WHERE created_at_day = DATE '2026-11-24'";

/// A query over one day that reads the files (a count is answered from the
/// manifest's row counts without them).
const ONE_DAY_SUM: &str =
    "SELECT sum(amount) AS amount FROM transactions WHERE created_at_day = DATE '2026-11-24'";

#[tokio::test(flavor = "multi_thread")]
async fn local_lake() {
    let name = unique("query_local");
    let pg = PgDb::create(&name).await;
    seed(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config("lake", &pg.url));
    load_transactions(&cfg);
    let table_dir = dir.path().join("lake/transactions");
    let manifest = table_state(dir.path().join("lake").to_str().unwrap(), "transactions").await;

    // Counts and sums, overall and per partition day.
    assert_eq!(
        csv(&cfg, "SELECT count(*) AS n, CAST(sum(amount) AS DECIMAL(12,2)) AS total, count(status) AS with_status FROM transactions"),
        "n,total,with_status\n48,1410.00,36\n"
    );
    assert_eq!(csv(&cfg, PER_DAY), PER_DAY_CSV);

    // The file's own timestamp and the folder's day, as CSV and as JSON lines.
    let rows = "SELECT id, status, created_at, created_at_day FROM transactions \
                WHERE id IN (3, 4, 16) ORDER BY id";
    assert_eq!(
        csv(&cfg, rows),
        "id,status,created_at,created_at_day\n\
         3,FAILED,2026-11-23T04:30:00Z,2026-11-23\n\
         4,,2026-11-23T06:00:00Z,2026-11-23\n\
         16,,2026-11-24T00:00:00Z,2026-11-24\n"
    );
    assert_eq!(
        query_ok(&cfg, &["--format", "json"], rows),
        "{\"id\":3,\"status\":\"FAILED\",\"created_at\":\"2026-11-23T04:30:00Z\",\"created_at_day\":\"2026-11-23\"}\n\
         {\"id\":4,\"status\":null,\"created_at\":\"2026-11-23T06:00:00Z\",\"created_at_day\":\"2026-11-23\"}\n\
         {\"id\":16,\"status\":null,\"created_at\":\"2026-11-24T00:00:00Z\",\"created_at_day\":\"2026-11-24\"}\n"
    );
    let table = query_ok(&cfg, &[], "SELECT count(*) AS n FROM transactions");
    assert_eq!(table, "+----+\n| n  |\n+----+\n| 48 |\n+----+\n");

    // A one-day filter plans only that day's live files; without it, all of them.
    // Counts come from the manifest: no file is read.
    assert_eq!(csv(&cfg, ONE_DAY), "n\n16\n");
    assert_eq!(scanned_days(&cfg, ONE_DAY), Vec::<String>::new());
    assert_eq!(
        scanned_days(&cfg, ONE_DAY_SUM),
        manifest_days(&manifest, Some("2026-11-24"))
    );
    assert_eq!(
        scanned_days(&cfg, "SELECT sum(amount) FROM transactions"),
        manifest_days(&manifest, None)
    );
    assert_eq!(
        scanned_days(
            &cfg,
            "SELECT sum(amount) FROM transactions WHERE created_at_day >= DATE '2026-11-24'"
        ),
        [
            manifest_days(&manifest, Some("2026-11-24")),
            manifest_days(&manifest, Some("2026-11-25"))
        ]
        .concat()
    );

    // The scan reports the manifest's row count, so a hash join is built on the
    // smaller input (one day) although the SQL names the whole table first: the
    // LEFT JOIN is planned as a RIGHT JOIN with the sides swapped.
    let join = "SELECT count(*) AS n FROM transactions AS t LEFT JOIN \
                (SELECT id FROM transactions WHERE created_at_day = DATE '2026-11-24') AS d \
                ON d.id = t.id";
    assert_eq!(csv(&cfg, join), "n\n48\n");
    let plan = csv(&cfg, &format!("EXPLAIN {join}"));
    let physical = plan.split("physical_plan,").nth(1).unwrap();
    assert!(
        physical.contains("join_type=Right"),
        "the join is not built on the one-day side:\n{physical}"
    );

    // Files no commit lists are invisible: a copy of a live file in its
    // partition folder, and one in a folder of a day that was never committed.
    let live = manifest["partitions"]["2026-11-24"]["files"][0]["path"]
        .as_str()
        .unwrap();
    std::fs::copy(
        table_dir.join(live),
        table_dir.join("created_at_day=2026-11-24/part-orphan-00000.parquet"),
    )
    .unwrap();
    std::fs::create_dir_all(table_dir.join("created_at_day=2026-11-30")).unwrap();
    std::fs::copy(
        table_dir.join(live),
        table_dir.join("created_at_day=2026-11-30/part-orphan-00000.parquet"),
    )
    .unwrap();
    assert_eq!(csv(&cfg, PER_DAY), PER_DAY_CSV);
    assert_eq!(csv(&cfg, ONE_DAY), "n\n16\n");

    // Parquet output, read back.
    let out_file = dir.path().join("result.parquet");
    query_ok(
        &cfg,
        &[
            "--format",
            "parquet",
            "--output",
            out_file.to_str().unwrap(),
        ],
        "SELECT * FROM transactions WHERE created_at_day <> DATE '2026-11-23'",
    );
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&out_file).unwrap(),
    )
    .unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 32);
    assert!(!dir.path().join("result.parquet.partial").exists());
    assert!(reader
        .schema()
        .fields()
        .iter()
        .any(|f| f.name() == "created_at_day"));
    assert_query_error(
        &query(&cfg, &["--format", "parquet"], "SELECT 1"),
        "--format parquet writes a file: add --output FILE",
    );

    // Errors: SQL, a table without a committed run, a write, a missing lake folder.
    assert_query_error(
        &query(&cfg, &[], "SELEC count(*) FROM transactions"),
        "SQL error: ParserError(\"Expected: an SQL statement, found: SELEC",
    );
    assert_query_error(
        &query(&cfg, &[], "SELECT * FROM never_run"),
        "table never_run has no data yet (no committed run)",
    );
    assert_query_error(
        &query(&cfg, &[], "CREATE TABLE t AS SELECT 1"),
        "DDL not supported",
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let missing_cfg = write_config(&elsewhere, &config("no-such-lake", &pg.url));
    let missing = elsewhere.path().join("no-such-lake");
    assert_query_error(
        &query(&missing_cfg, &[], "SELECT 1"),
        &format!("no lake at {}", missing.display()),
    );
    assert!(
        !missing.exists(),
        "querying must not create the lake folder"
    );

    // The one-day query does not even open the other days' files: with another
    // day's live file corrupted it still succeeds, while a full scan fails.
    let other = manifest["partitions"]["2026-11-23"]["files"][0]["path"]
        .as_str()
        .unwrap();
    std::fs::write(table_dir.join(other), b"not parquet").unwrap();
    assert_eq!(csv(&cfg, ONE_DAY), "n\n16\n");
    let out = query(&cfg, &[], "SELECT sum(amount) FROM transactions");
    assert_eq!(out.status.code(), Some(6));

    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_lake() {
    use object_store::ObjectStoreExt;

    let name = unique("query_s3");
    let pg = PgDb::create(&name).await;
    seed(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let lake_url = format!("s3://{}/{name}", s3_bucket());
    let cfg = write_config(&dir, &config(&lake_url, &pg.url));
    load_transactions(&cfg);
    let store = s3_store();
    let table_prefix = format!("{name}/transactions");
    let manifest = s3_table_state(&name, "transactions").await;

    assert_eq!(csv(&cfg, PER_DAY), PER_DAY_CSV);
    assert_eq!(csv(&cfg, ONE_DAY), "n\n16\n");
    assert_eq!(
        scanned_days(&cfg, ONE_DAY_SUM),
        manifest_days(&manifest, Some("2026-11-24"))
    );

    // An object dropped beside the live files is not part of the table.
    let live = manifest["partitions"]["2026-11-24"]["files"][0]["path"]
        .as_str()
        .unwrap();
    let bytes = store
        .get(&object_store::path::Path::from(format!(
            "{table_prefix}/{live}"
        )))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    store
        .put(
            &object_store::path::Path::from(format!(
                "{table_prefix}/created_at_day=2026-11-24/part-orphan-00000.parquet"
            )),
            bytes.into(),
        )
        .await
        .unwrap();
    assert_eq!(csv(&cfg, PER_DAY), PER_DAY_CSV);

    assert_query_error(
        &query(&cfg, &[], "SELECT count(*) FROM never_run"),
        "table never_run has no data yet (no committed run)",
    );

    pg.drop().await;
}
