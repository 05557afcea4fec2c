//! `sluice run --table T --since D1 --until D2`: rows a watermark cannot see
//! (inserted or updated with a cursor below it) are read again by the range of
//! their cursor, merged into the lake and loaded into ClickHouse exactly once; the
//! watermark does not move; a second backfill changes nothing; a crash anywhere in
//! a backfill loses and duplicates nothing. PostgreSQL → S3 lake → ClickHouse.

mod common;

use std::process::Output;

use common::*;

const SOURCE_ROWS: &str = "SELECT id::text, amount::text, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
     FROM transactions t ORDER BY t.id";

fn warehouse_rows(db: &str) -> String {
    format!(
        "SELECT id, amount, formatDateTime(created_at, '%Y-%m-%d %H:%i:%S'), \
         formatDateTime(updated_at, '%Y-%m-%d %H:%i:%S') FROM `{db}`.transactions ORDER BY id"
    )
}

/// 48 rows created on 2026-01-05 … 2026-01-07, all last updated on 2026-01-10.
async fn seed(pg: &PgDb) {
    pg.exec(
        "CREATE TABLE transactions (
            id bigint PRIMARY KEY,
            amount bigint NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL);
         INSERT INTO transactions
         SELECT g, g * 10,
                timestamptz '2026-01-05 00:00:00+00' + g * interval '90 minutes',
                timestamptz '2026-01-10 12:00:00+00' + g * interval '1 second'
         FROM generate_series(0, 47) g;",
    )
    .await;
}

fn config(prefix: &str, pg_url: &str, ch_db: &str) -> String {
    format!(
        r#"
[lake]
url = "s3://{bucket}/{prefix}"

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
batch_rows = 8
"#,
        bucket = s3_bucket(),
        ch = clickhouse_url(),
        ch_s3 = clickhouse_s3_endpoint(),
    )
}

struct Scenario {
    name: String,
    pg: PgDb,
    _dir: tempfile::TempDir,
    config: String,
}

impl Scenario {
    async fn new(test: &str) -> Self {
        let name = unique(test);
        let pg = PgDb::create(&name).await;
        seed(&pg).await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&dir, &config(&name, &pg.url, &name));
        Self {
            config: config.to_str().unwrap().to_string(),
            name,
            pg,
            _dir: dir,
        }
    }

    fn sluice(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        // `--config` goes after the (sub)command: `run`, `runs`, `runs show`.
        let at = if args.get(1) == Some(&"show") { 2 } else { 1 };
        let mut all = args[..at].to_vec();
        all.extend(["--config", &self.config]);
        all.extend(&args[at..]);
        tokio::task::block_in_place(|| sluice(&all, env))
    }

    /// Runs `sluice ARGS --config F`; panics unless it succeeds; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.sluice(args, &[]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "sluice {args:?} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        stdout.to_string()
    }

    /// Exit code and stdout + stderr.
    fn code(&self, args: &[&str]) -> (i32, String) {
        let out = self.sluice(args, &[]);
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    async fn manifest(&self) -> serde_json::Value {
        s3_table_state(&self.name, "transactions").await
    }

    /// The lake and ClickHouse both hold exactly the source's rows, and the lake
    /// holds no file its manifest does not list.
    async fn assert_equal_to_source(&self) {
        let source = self.pg.lines(SOURCE_ROWS).await;
        let warehouse = ch_lines(&warehouse_rows(&self.name)).await;
        assert_eq!(source, warehouse, "ClickHouse rows");

        let store = s3_store();
        let prefix = format!("{}/transactions", self.name);
        let batches = read_parquet_under(&store, &prefix).await;
        let mut lake: Vec<String> = Vec::new();
        for b in &batches {
            let ids = b.column_by_name("id").unwrap();
            let amounts = b.column_by_name("amount").unwrap();
            let ids = ids
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            let amounts = amounts
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            for i in 0..b.num_rows() {
                lake.push(format!("{}|{}", ids.value(i), amounts.value(i)));
            }
        }
        lake.sort_by_key(|l| l.split('|').next().unwrap().parse::<i64>().unwrap());
        let source_ids: Vec<String> = source
            .iter()
            .map(|l| l.split('|').take(2).collect::<Vec<_>>().join("|"))
            .collect();
        assert_eq!(lake, source_ids, "lake rows (no duplicates, none missing)");

        let manifest = self.manifest().await;
        let live: std::collections::BTreeSet<String> = manifest["partitions"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|p| p["files"].as_array().unwrap().iter())
            .map(|f| format!("{prefix}/{}", f["path"].as_str().unwrap()))
            .chain(s3_kept_files(&self.name, "transactions").await)
            .collect();
        let files: std::collections::BTreeSet<String> = list(&store, &prefix)
            .await
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.ends_with(".parquet") && !p.contains("/_delta_log/"))
            .collect();
        assert_eq!(
            files, live,
            "Parquet files are the live ones and those kept for time travel"
        );
    }

    async fn drop(self) {
        ch_exec(&format!("DROP DATABASE IF EXISTS `{}`", self.name)).await;
        self.pg.drop().await;
    }
}

/// The `transactions` line of a run summary: read, changed, skipped, parts.
fn counts(stdout: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("transactions"))
        .unwrap_or_else(|| panic!("no report line: {stdout}"));
    line.split_whitespace()
        .skip(1)
        .take(4)
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_loads_rows_below_the_watermark_once_and_keeps_it() {
    let s = Scenario::new("backfill").await;
    let first = s.ok(&["run"]);
    assert_eq!(counts(&first)[1], "48", "{first}");
    let before = s.manifest().await;
    assert_eq!(
        before["watermark"]["micros"],
        serde_json::json!(1_768_046_447_000_000i64),
        "2026-01-10 12:00:47Z"
    );

    // Rows a watermark cannot see: inserted and updated with a cursor from
    // 2026-01-06, below it: four on 2026-01-03 and four on 2026-01-04 (new days),
    // two on 2026-01-05 (a committed day), and an update of a row of 2026-01-05.
    s.pg.exec(
        "INSERT INTO transactions
         SELECT g, g * 10,
                timestamptz '2026-01-03 00:00:00+00' + (g - 100) * interval '6 hours',
                timestamptz '2026-01-06 08:00:00+00' + g * interval '1 second'
         FROM generate_series(100, 109) g;
         UPDATE transactions SET amount = 999, updated_at = timestamptz '2026-01-06 09:00:00+00'
         WHERE id = 5;",
    )
    .await;
    let missed = s.ok(&["run"]);
    assert_eq!(counts(&missed)[1], "0", "{missed}");
    let ch_count = |db: String| async move {
        ch_lines(&format!("SELECT count() FROM `{db}`.transactions")).await[0].clone()
    };
    assert_eq!(ch_count(s.name.clone()).await, "48");

    // The dry run of the backfill: its query and the days it would replace.
    let version = before["version"].clone();
    let plan = s.ok(&[
        "run",
        "--table",
        "transactions",
        "--since",
        "2026-01-06",
        "--until",
        "2026-01-06",
        "--dry-run",
    ]);
    assert!(
        plan.contains(
            r#"WHERE "updated_at" >= TIMESTAMPTZ '2026-01-06 00:00:00+00' AND "updated_at" < TIMESTAMPTZ '2026-01-07 00:00:00+00' ORDER BY "created_at""#
        ),
        "{plan}"
    );
    assert!(
        plan.contains("the watermark stays at 2026-01-10 12:00:47Z"),
        "{plan}"
    );
    assert!(plan.contains("11 row(s) read on 3 day(s)"), "{plan}");
    assert!(
        plan.contains("2026-01-03: 4 row(s) read, a new day in the lake"),
        "{plan}"
    );
    assert!(
        plan.contains("2026-01-05: 3 row(s) read, merged by key into the day's 16 row(s)"),
        "{plan}"
    );
    assert_eq!(
        s.manifest().await["version"],
        version,
        "a dry run commits nothing"
    );

    // The backfill: every row of the range, once, in the lake and ClickHouse.
    let args = [
        "run",
        "--table",
        "transactions",
        "--since",
        "2026-01-06",
        "--until",
        "2026-01-06",
    ];
    let backfill = s.ok(&args);
    assert!(
        backfill.contains("backfill of the cursor's days 2026-01-06 … 2026-01-06: watermarks kept"),
        "{backfill}"
    );
    assert_eq!(counts(&backfill), ["11", "11", "0", "3"], "{backfill}");
    s.assert_equal_to_source().await;
    let after = s.manifest().await;
    assert_eq!(after["watermark"], before["watermark"]);
    assert_eq!(after["seen_rows"], before["seen_rows"]);
    assert_eq!(after["pending_warehouse"], serde_json::json!([]));

    // The run report says it was a backfill, and of which days.
    let list = s.ok(&["runs"]);
    let newest = list.lines().nth(1).unwrap();
    assert!(
        newest.ends_with("ok  backfill 2026-01-06…2026-01-06"),
        "{list}"
    );
    let id = newest.split_whitespace().next().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["runs", "show", "--json", id])).unwrap();
    assert_eq!(json["backfill"]["since"], "2026-01-06");
    assert_eq!(json["backfill"]["until"], "2026-01-06");
    assert_eq!(
        json["tables"][0]["watermark_before"],
        json["tables"][0]["watermark_after"]
    );
    let shown = s.ok(&["runs", "show", id]);
    assert!(
        shown.contains("backfill of the cursor's days 2026-01-06 … 2026-01-06"),
        "{shown}"
    );

    // Again, and over a whole month: the rows are in the lake as they are, so
    // nothing is written, committed or loaded.
    let again = s.ok(&args);
    assert_eq!(counts(&again), ["11", "0", "11", "0"], "{again}");
    let month = s.ok(&[
        "run",
        "--table",
        "transactions",
        "--since",
        "2026-01-01",
        "--until",
        "2026-01-31",
    ]);
    assert_eq!(counts(&month), ["58", "0", "58", "0"], "{month}");
    assert_eq!(s.manifest().await["version"], after["version"]);
    s.assert_equal_to_source().await;

    // The nightly run still reads from its watermark.
    s.pg.exec(
        "INSERT INTO transactions VALUES (200, 1, timestamptz '2026-01-07 10:00:00+00',
                                          timestamptz '2026-01-11 00:00:00+00')",
    )
    .await;
    let next = s.ok(&["run"]);
    assert_eq!(counts(&next)[1], "1", "{next}");
    assert!(next.contains("2026-01-11 00:00:00Z"), "{next}");
    s.assert_equal_to_source().await;
    s.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_arguments_are_checked() {
    let s = Scenario::new("backfill_args").await;
    let t = ["--table", "transactions"];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--since", "2026-01-31", "--until", "2026-01-01"],
            "--since 2026-01-31 is after --until 2026-01-01",
        ),
        (&["--since", "2026-01-01"], "--until"),
        (
            &["--since", "2026-13-01", "--until", "2026-12-31"],
            "--since",
        ),
        (
            &[
                "--since",
                "2026-01-01",
                "--until",
                "2026-01-02",
                "--full-refresh",
            ],
            "--full-refresh",
        ),
        (
            &[
                "--since",
                "2026-01-01",
                "--until",
                "2026-01-02",
                "--allow-schema-change",
            ],
            "--allow-schema-change",
        ),
        // The table was never loaded: no watermark to keep.
        (
            &["--since", "2026-01-01", "--until", "2026-01-02"],
            "no watermark yet",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["run"];
        args.extend(t);
        args.extend(*extra);
        let (exit, out) = s.code(&args);
        assert_eq!(exit, 2, "{args:?}: {out}");
        assert!(out.contains(expected), "{args:?}: {out}");
    }
    // --table is required.
    let (exit, out) = s.code(&["run", "--since", "2026-01-01", "--until", "2026-01-02"]);
    assert_eq!(exit, 2, "{out}");
    assert!(out.contains("--table"), "{out}");

    // A snapshot table cannot be backfilled (checked before any connection).
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &format!(
            r#"
[lake]
url = "{}"

[sources.docs]
kind = "mongodb"
url = "mongodb://127.0.0.1:1/none"

[[table]]
name = "users"
source = "docs"
collection = "users"
mode = "snapshot"
"#,
            dir.path().join("lake").display()
        ),
    );
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec![
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--table",
            "users",
            "--since",
            "2026-01-01",
            "--until",
            "2026-01-02",
        ];
        args.extend(extra);
        let out = tokio::task::block_in_place(|| sluice(&args, &[]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("watermark tables only"), "{stderr}");
    }
    s.drop().await;
}

/// A backfill killed at each commit-relevant point, then the nightly run and the
/// backfill again: the lake and ClickHouse equal the source, the watermark is
/// where it was, and no stray file is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_backfill_loses_and_duplicates_nothing() {
    let s = Scenario::new("backfill_crash").await;
    s.ok(&["run"]);
    let watermark = s.manifest().await["watermark"].clone();
    let args = [
        "run",
        "--table",
        "transactions",
        "--since",
        "2026-01-01",
        "--until",
        "2026-01-09",
    ];
    let points = [
        "extract.batch",
        "merge.batch",
        "lake.before_commit",
        "lake.after_commit",
        "lake.after_delete",
        "run.before_final_commit",
        "run.after_final_commit",
    ];
    for (i, point) in points.iter().enumerate() {
        // New backdated rows on a new day and on committed days, and an update.
        let base = 1000 + 100 * i as i64;
        s.pg.exec(&format!(
            "INSERT INTO transactions
             SELECT g, g, timestamptz '2026-01-02 00:00:00+00' + (g - {base}) * interval '20 hours',
                    timestamptz '2026-01-08 00:00:00+00' + g * interval '1 second'
             FROM generate_series({base}, {base} + 5) g;
             UPDATE transactions SET amount = amount + 1, updated_at = timestamptz '2026-01-08 01:00:00+00'
             WHERE id = {i};"
        ))
        .await;
        let out = s.sluice(&args, &[("SLUICE_FAULT", point)]);
        assert!(
            !out.status.success(),
            "{point}: the fault was not reached: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        s.ok(&["run"]);
        s.ok(&args);
        s.assert_equal_to_source().await;
        let m = s.manifest().await;
        assert_eq!(m["watermark"], watermark, "{point}");
        assert_eq!(m["pending_warehouse"], serde_json::json!([]), "{point}");
    }
    s.drop().await;
}
