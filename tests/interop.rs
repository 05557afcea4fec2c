//! Analysts' tools read the lake: DuckDB (`delta_scan`), pyarrow (through the
//! `deltalake` package) and polars (`read_delta`) read each table as a Delta
//! table, and all three also read a plain Parquet glob with Hive partitioning on,
//! run by `tests/support/interop_check.py` the way the README tells analysts to.
//! Each must return exactly the rows `sluice query` returns (timestamps
//! included), from a local folder and from S3.
//!
//! Needs `python3` with duckdb, duckdb-extension-httpfs, duckdb-extension-delta,
//! deltalake, pyarrow and polars (`scripts/test.sh` installs them).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// 60 transactions over 3 days (UTC); timestamps with milli- and microseconds;
/// NULL statuses, and one status that CSV must quote.
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
         SELECT g, g % 7, (g * 1.25 - 10)::numeric(12,2),
                CASE WHEN g = 5 THEN 'held, \"manual\"' WHEN g % 4 = 0 THEN NULL
                     WHEN g % 3 = 0 THEN 'FAILED' ELSE 'SUCCESS' END,
                timestamptz '2026-11-23 00:00:00+00' + g * interval '71 minutes'
                    + g * interval '1 millisecond',
                timestamptz '2026-11-26 12:00:00+00' + g * interval '1 second'
                    + g * interval '7 microseconds'
         FROM generate_series(0, 59) g;",
    )
    .await;
}

/// `keep_versions_days`: how long replaced files stay (for time travel).
fn config(lake_url: &str, pg_url: &str, keep_versions_days: u32) -> String {
    format!(
        r#"
[lake]
url = "{lake_url}"
keep_versions_days = {keep_versions_days}

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
batch_rows = 16
"#
    )
}

fn run_sluice(args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| sluice(args, &[]))
}

fn run_ok(args: &[&str]) -> String {
    let out = run_sluice(args);
    assert!(
        out.status.success(),
        "sluice {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What `sluice query` returns for the whole table, as CSV.
fn sluice_rows(cfg: &Path) -> String {
    run_ok(&[
        "query",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT * FROM transactions ORDER BY id",
    ])
}

const DELTA_READERS: [&str; 3] = ["duckdb_delta", "pyarrow_delta", "polars_delta"];

const READERS: [&str; 6] = [
    "duckdb_delta",
    "duckdb_glob",
    "pyarrow_delta",
    "pyarrow_glob",
    "polars_delta",
    "polars_glob",
];

/// Runs the Python readers on `lake` and returns each one's CSV, by reader name.
fn python_rows(lake: &str, out: &Path) -> Vec<(String, String)> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/interop_check.py");
    let result = tokio::task::block_in_place(|| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg(lake).arg("transactions").arg(out);
        for (k, v) in s3_env() {
            cmd.env(k, v);
        }
        cmd.output()
    })
    .unwrap_or_else(|e| panic!("{python} (needed for the interop tests): {e}"));
    assert!(
        result.status.success(),
        "{} failed (scripts/test.sh installs duckdb, its httpfs and delta extensions, deltalake, pyarrow and polars):\n{}",
        script.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    READERS
        .iter()
        .map(|r| {
            let text = std::fs::read_to_string(out.join(format!("{r}.csv"))).unwrap();
            (r.to_string(), text)
        })
        .collect()
}

fn assert_all_equal(expected: &str, got: &[(String, String)], only: &[&str]) {
    for (reader, text) in got {
        if only.contains(&reader.as_str()) {
            assert_eq!(
                text, expected,
                "{reader} differs from sluice query (left: {reader}, right: sluice)"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_lake() {
    let name = unique("interop_local");
    let pg = PgDb::create(&name).await;
    seed(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config("lake", &pg.url, 7));
    run_ok(&["run", "--config", cfg.to_str().unwrap()]);
    // A second run with updated rows rewrites two days copy-on-write; the
    // replaced files stay for time travel.
    pg.exec(
        "UPDATE transactions SET amount = amount + 1000, status = 'REFUNDED',
                updated_at = updated_at + interval '1 day'
         WHERE id IN (3, 40)",
    )
    .await;
    run_ok(&["run", "--config", cfg.to_str().unwrap()]);

    let expected = sluice_rows(&cfg);
    assert_eq!(expected.lines().count(), 61, "{expected}");
    assert!(expected.contains("\"held, \"\"manual\"\"\""), "{expected}");
    assert!(expected.contains(",REFUNDED,"), "{expected}");
    let lake = dir.path().join("lake");
    let got = python_rows(lake.to_str().unwrap(), &dir.path().join("py1"));
    assert_all_equal(&expected, &got, &DELTA_READERS);
    for (reader, text) in &got {
        if reader.ends_with("_glob") {
            assert!(
                text.lines().count() > expected.lines().count(),
                "{reader} should also read the replaced files kept for time travel"
            );
        }
    }

    // A file that no commit lists (a run that died before its commit leaves
    // such files until the next run): the Delta readers and sluice do not see
    // it; a plain glob does, which is why the README recommends reading the
    // Delta table.
    let manifest = table_state(lake.to_str().unwrap(), "transactions").await;
    let live = manifest["partitions"]["2026-11-24"]["files"][0]["path"]
        .as_str()
        .unwrap();
    let table_dir = lake.join("transactions");
    std::fs::copy(
        table_dir.join(live),
        table_dir.join("created_at_day=2026-11-24/part-orphan-00000.parquet"),
    )
    .unwrap();
    assert_eq!(sluice_rows(&cfg), expected);
    let got = python_rows(lake.to_str().unwrap(), &dir.path().join("py2"));
    assert_all_equal(&expected, &got, &DELTA_READERS);

    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_lake() {
    let name = unique("interop_s3");
    let pg = PgDb::create(&name).await;
    seed(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let lake_url = format!("s3://{}/{name}", s3_bucket());
    // No history kept: replaced files go right after the commit, so a plain
    // glob reads the table too.
    let cfg = write_config(&dir, &config(&lake_url, &pg.url, 0));
    run_ok(&["run", "--config", cfg.to_str().unwrap()]);
    pg.exec(
        "UPDATE transactions SET amount = amount + 1000, status = 'REFUNDED',
                updated_at = updated_at + interval '1 day'
         WHERE id IN (3, 40)",
    )
    .await;
    run_ok(&["run", "--config", cfg.to_str().unwrap()]);

    let expected = sluice_rows(&cfg);
    assert_eq!(expected.lines().count(), 61, "{expected}");
    assert!(expected.contains(",REFUNDED,"), "{expected}");
    let got = python_rows(&lake_url, &dir.path().join("py"));
    assert_all_equal(&expected, &got, &READERS);

    // ClickHouse reads the Delta table in place: the same rows, timestamps to
    // the microsecond, the day column included.
    let env: std::collections::HashMap<_, _> = s3_env().into_iter().collect();
    let delta = format!(
        "deltaLake('{endpoint}/{bucket}/{name}/transactions/', '{key}', '{secret}')",
        endpoint = clickhouse_s3_endpoint(),
        bucket = s3_bucket(),
        key = env["AWS_ACCESS_KEY_ID"],
        secret = env["AWS_SECRET_ACCESS_KEY"],
    );
    let in_clickhouse = ch_lines(&format!(
        "SELECT count(), toInt64(sum(amount) * 100), countIf(status IS NULL), \
         sum(toUnixTimestamp64Micro(created_at)), sum(toUInt32(created_at_day)) FROM {delta}"
    ))
    .await;
    let in_sluice = run_ok(&[
        "query",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT count(*), CAST(sum(amount) * 100 AS BIGINT), sum(CASE WHEN status IS NULL THEN 1 ELSE 0 END), \
         sum(CAST(created_at AS BIGINT)), sum(CAST(created_at_day AS INT)) FROM transactions",
    ]);
    assert_eq!(
        in_clickhouse.join("\n"),
        in_sluice
            .lines()
            .skip(1)
            .map(|l| l.replace(',', "|"))
            .collect::<Vec<_>>()
            .join("\n"),
        "ClickHouse deltaLake() vs sluice query"
    );

    pg.drop().await;
}
