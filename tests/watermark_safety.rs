//! Watermark capture that loses nothing (issue 23), on the real PostgreSQL and
//! MariaDB: a row of a transaction open during a run arrives with the next run;
//! `lookback` re-reads rows stamped in the past by the application; and
//! `detect_deletes` removes from the lake and ClickHouse the rows the source
//! deleted, without a replication log. Every step ends with the source, the
//! lake's files and ClickHouse holding the same rows, and a rerun with no source
//! change rewrites nothing.

mod common;
mod common_mysql;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use common::*;
use common_mysql::MyDb;
use mysql::prelude::Queryable;

/// `items` with a trigger stamping `updated_at = now()`, as the README advises.
const PG_ITEMS: &str = "
    CREATE TABLE items (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
                        updated_at timestamptz NOT NULL, note text);
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
    CREATE TRIGGER items_touch BEFORE INSERT OR UPDATE ON items
        FOR EACH ROW EXECUTE FUNCTION touch();";

fn config(prefix: &str, kind: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[lake]
url = "s3://{bucket}/{prefix}"

[sources.app]
kind = "{kind}"
url = "{url}"

[clickhouse]
url = "{ch}"
database = "{prefix}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "items"
source = "app"
source_table = "items"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
batch_rows = 64
{extra}
"#,
        bucket = s3_bucket(),
        ch = clickhouse_url(),
        ch_s3 = clickhouse_s3_endpoint(),
    )
}

struct Run {
    prefix: String,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    fn new(prefix: &str, kind: &str, url: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&dir, &config(prefix, kind, url, extra));
        Self {
            prefix: prefix.to_string(),
            config,
            _dir: dir,
        }
    }

    /// Runs `sluice run` and returns its summary line's read, changed and
    /// skipped counts, and the whole output.
    async fn run(&self) -> ([u64; 3], String) {
        let config = self.config.clone();
        let out = tokio::task::spawn_blocking(move || sluice_run_ok(&config))
            .await
            .unwrap();
        let line = out
            .lines()
            .find(|l| l.starts_with("items"))
            .unwrap_or_else(|| panic!("no summary line:\n{out}"));
        let n: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(3)
            .map(|v| v.parse().unwrap())
            .collect();
        ([n[0], n[1], n[2]], out)
    }

    /// Runs with a fault point armed; the process must die there.
    async fn run_killed_at(&self, fault: &str) {
        let config = self.config.clone();
        let fault_env = fault.to_string();
        let out = tokio::task::spawn_blocking(move || {
            sluice(
                &["run", "--config", config.to_str().unwrap()],
                &[("SLUICE_FAULT", &fault_env)],
            )
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the run survived {fault}:\n{stderr}");
        assert!(
            stderr.contains(&format!("fault injected at {fault}")),
            "the run failed before {fault}:\n{stderr}"
        );
    }

    /// `id|note` of every row ClickHouse has, by id.
    async fn warehouse(&self) -> Vec<String> {
        ch_lines(&format!(
            "SELECT id, note FROM `{}`.items ORDER BY id",
            self.prefix
        ))
        .await
    }

    /// The ids in the lake's Parquet files, sorted (duplicates kept).
    async fn lake_ids(&self) -> Vec<i64> {
        let batches = read_parquet_under(&s3_store(), &format!("{}/items/", self.prefix)).await;
        let mut ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let ids = arrow::compute::cast(
                    b.column_by_name("id").unwrap(),
                    &arrow::datatypes::DataType::Int64,
                )
                .unwrap();
                ids.as_primitive::<Int64Type>().values().to_vec()
            })
            .collect();
        ids.sort();
        ids
    }

    async fn manifest(&self) -> serde_json::Value {
        s3_table_state(&self.prefix, "items").await
    }

    /// The source's `id|note` rows (already sorted by id) equal ClickHouse's
    /// and the lake's ids.
    async fn assert_equal(&self, source: Vec<String>, step: &str) {
        assert_eq!(self.warehouse().await, source, "ClickHouse after {step}");
        let ids: Vec<i64> = source
            .iter()
            .map(|l| l.split('|').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(self.lake_ids().await, ids, "lake ids after {step}");
    }
}

async fn pg_rows(pg: &PgDb) -> Vec<String> {
    pg.lines("SELECT id::text, note FROM items ORDER BY items.id")
        .await
}

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The issue's scenario: transaction A inserts row 9001 (stamped with A's
/// start) and stays open while a later row commits and a run reads it; once A
/// commits, the next run loads 9001.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_row_of_an_open_transaction_arrives_next_run() {
    let name = unique("wmopen");
    let pg = PgDb::create(&name).await;
    pg.exec(PG_ITEMS).await;
    pg.exec(
        "INSERT INTO items SELECT g, now() - (g % 3) * interval '1 day', now(), 'v1'
         FROM generate_series(1, 50) g",
    )
    .await;
    let run = Run::new(&name, "postgres", &pg.url, "");
    let ([read, changed, _], _) = run.run().await;
    assert_eq!((read, changed), (50, 50));

    // 1. A inserts 9001 and stays open; 2. 9002 commits with a later stamp.
    let a = pg_connect(&pg.url).await;
    a.batch_execute("BEGIN; INSERT INTO items VALUES (9001, now(), now(), 'open')")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    pg.exec("INSERT INTO items VALUES (9002, now(), now(), 'later')")
        .await;
    // 3. The run reads 9002 and holds its watermark at A's start.
    let ([_, changed, _], out) = run.run().await;
    assert_eq!(changed, 1, "{out}");
    run.assert_equal(pg_rows(&pg).await, "the run during A")
        .await;
    let watermark = run.manifest().await["watermark"]["micros"]
        .as_i64()
        .unwrap();
    let a_start: i64 = pg
        .lines("SELECT (extract(epoch FROM updated_at) * 1000000)::bigint::text FROM items WHERE id = 9002")
        .await[0]
        .parse()
        .unwrap();
    assert!(
        watermark < a_start,
        "the watermark stays before 9002, at A's start"
    );

    // 4. A commits: the next run loads 9001, reads 9002 again and drops it.
    a.batch_execute("COMMIT").await.unwrap();
    let ([read, changed, skipped], out) = run.run().await;
    assert_eq!((read, changed, skipped), (2, 1, 1), "{out}");
    let rows = pg_rows(&pg).await;
    assert!(rows.contains(&"9001|open".to_string()));
    run.assert_equal(rows, "A's commit").await;

    // A rerun with no source change rewrites nothing.
    let manifest = run.manifest().await;
    let objects = list(&s3_store(), &format!("{name}/items/")).await;
    let ([_, changed, _], out) = run.run().await;
    assert_eq!(changed, 0, "{out}");
    assert_eq!(run.manifest().await, manifest);
    assert_eq!(list(&s3_store(), &format!("{name}/items/")).await, objects);
    pg.drop().await;
}

/// `lookback`: a row stamped by the application's clock five minutes before
/// the watermark is read by the next run; rows read again unchanged are dropped.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_lookback_reads_rows_stamped_in_the_past() {
    let name = unique("wmlookback");
    let pg = PgDb::create(&name).await;
    pg.exec(
        "CREATE TABLE items (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
                             updated_at timestamptz NOT NULL, note text);
         CREATE TABLE base AS SELECT date_trunc('second', now()) - interval '1 hour' AS t;
         INSERT INTO items SELECT g, (SELECT t FROM base) - (g % 4) * interval '1 day',
                                  (SELECT t FROM base) + g * interval '1 second', 'v1'
         FROM generate_series(1, 40) g;",
    )
    .await;
    let run = Run::new(&name, "postgres", &pg.url, "lookback = \"15m\"");
    run.run().await;
    // The application stamps 41 five minutes before the watermark (t + 40 s).
    pg.exec(
        "INSERT INTO items VALUES (41, now(), (SELECT t FROM base) + interval '40 seconds' - interval '5 minutes', 'late');
         UPDATE items SET note = 'v2' WHERE id = 40;",
    )
    .await;
    let ([read, changed, skipped], out) = run.run().await;
    // Every row is within 15 minutes of the watermark: 41 read, the 39 others
    // read again and dropped unchanged, 40 changed.
    assert_eq!((read, changed, skipped), (41, 2, 39), "{out}");
    run.assert_equal(pg_rows(&pg).await, "the late row").await;
    let manifest = run.manifest().await;
    let ([_, changed, _], out) = run.run().await;
    assert_eq!(changed, 0, "{out}");
    assert_eq!(run.manifest().await, manifest, "nothing rewritten");
    pg.drop().await;
}

/// `detect_deletes`: deletes on scattered days, a whole day deleted, a key
/// deleted and inserted again; a rerun that changes nothing; a kill during the
/// detection followed by a rerun.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_detect_deletes() {
    let name = unique("wmdeletes");
    let pg = PgDb::create(&name).await;
    pg.exec(PG_ITEMS).await;
    pg.exec(
        "INSERT INTO items SELECT g, date_trunc('day', now()) - (g % 10) * interval '1 day' + interval '1 hour',
                                  now(), 'v1'
         FROM generate_series(1, 300) g",
    )
    .await;
    let run = Run::new(&name, "postgres", &pg.url, "detect_deletes = true");
    run.run().await;
    run.assert_equal(pg_rows(&pg).await, "the first load").await;
    let days_before = ch_lines(&format!(
        "SELECT count(DISTINCT _partition_id) FROM `{name}`.items"
    ))
    .await;
    assert_eq!(days_before, vec!["10"]);

    // Scattered days lose a few rows; day 9 (ids ≡ 9 mod 10) loses all of them;
    // key 7 is deleted and inserted again with another note; one row updated.
    pg.exec(
        "DELETE FROM items WHERE id IN (12, 42, 15, 55, 18, 288);
         DELETE FROM items WHERE id % 10 = 9;
         DELETE FROM items WHERE id = 7;
         INSERT INTO items VALUES (7, date_trunc('day', now()) - interval '7 days' + interval '1 hour', now(), 'again');
         UPDATE items SET note = 'v2' WHERE id = 100;",
    )
    .await;
    let ([_, changed, _], out) = run.run().await;
    assert_eq!(changed, 2, "{out}");
    assert!(out.contains("deletes: 36 row(s)"), "{out}");
    run.assert_equal(pg_rows(&pg).await, "the deletes").await;
    let days = ch_lines(&format!(
        "SELECT count(DISTINCT _partition_id) FROM `{name}`.items"
    ))
    .await;
    assert_eq!(days, vec!["9"], "the emptied day's partition is dropped");

    // A rerun with no source change: nothing deleted, nothing rewritten, and
    // no lake day read again (each keeps its fingerprint in the manifest).
    let manifest = run.manifest().await;
    let partitions = manifest["partitions"].as_object().unwrap();
    assert_eq!(partitions.len(), 10);
    for (day, partition) in partitions {
        let rows = partition["rows"].as_u64().unwrap();
        assert_eq!(partition["key_print"]["rows"].as_u64(), Some(rows), "{day}");
    }
    let ([_, changed, _], out) = run.run().await;
    assert_eq!(changed, 0, "{out}");
    assert!(!out.contains("deletes:"), "{out}");
    assert_eq!(run.manifest().await, manifest);

    // Killed after fetching the keys of the days that differ, then rerun.
    pg.exec("DELETE FROM items WHERE id IN (1, 101, 202)").await;
    run.run_killed_at("detect_deletes.after_keys").await;
    let ([_, _, _], out) = run.run().await;
    assert!(out.contains("deletes: 3 row(s)"), "{out}");
    run.assert_equal(pg_rows(&pg).await, "the rerun after a kill")
        .await;
    pg.drop().await;
}

/// MariaDB: the open-transaction guard (`innodb_trx`), `lookback` and delete
/// detection, with a kill during the detection.
#[tokio::test(flavor = "multi_thread")]
async fn mariadb_open_transaction_lookback_and_deletes() {
    let name = unique("wmmaria");
    let mut db = MyDb::create(&name);
    db.exec(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, created_at DATETIME(6) NOT NULL,
            updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
            note VARCHAR(20)) ENGINE=InnoDB",
    );
    db.exec(
        "INSERT INTO items (id, created_at, note)
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 120)
         SELECT n, TIMESTAMP(UTC_DATE()) - INTERVAL (n % 6) DAY + INTERVAL 1 HOUR, 'v1' FROM g",
    );
    let run = Run::new(
        &name,
        "mysql",
        &db.url,
        "detect_deletes = true\nlookback = \"15m\"",
    );
    run.run().await;
    let rows = |db: &mut MyDb| db.lines("SELECT id, note FROM items ORDER BY id");
    run.assert_equal(rows(&mut db), "the first load").await;

    // A transaction inserts 9001 and stays open; 9002 commits after it; three
    // rows on scattered days are deleted.
    let mut a = mysql::Conn::new(mysql::Opts::from_url(&db.url).unwrap()).unwrap();
    a.query_drop("START TRANSACTION").unwrap();
    a.query_drop("INSERT INTO items (id, created_at, note) VALUES (9001, UTC_TIMESTAMP(), 'open')")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    db.exec("INSERT INTO items (id, created_at, note) VALUES (9002, UTC_TIMESTAMP(), 'later')");
    db.exec("DELETE FROM items WHERE id IN (3, 50, 77)");
    let ([_, changed, _], out) = run.run().await;
    assert_eq!(changed, 1, "{out}");
    assert!(out.contains("deletes: 3 row(s)"), "{out}");
    run.assert_equal(rows(&mut db), "the run during the transaction")
        .await;

    // The commit: 9001 arrives.
    a.query_drop("COMMIT").unwrap();
    let ([_, changed, _], out) = run.run().await;
    assert_eq!(changed, 1, "{out}");
    let now = rows(&mut db);
    assert!(now.contains(&"9001|open".to_string()));
    run.assert_equal(now, "the commit").await;

    // A row the application stamped five minutes in the past (lookback), and a
    // key deleted and inserted again.
    db.exec(
        "INSERT INTO items (id, created_at, updated_at, note)
         VALUES (9003, UTC_TIMESTAMP(), NOW(6) - INTERVAL 5 MINUTE, 'late');
         DELETE FROM items WHERE id = 10;
         INSERT INTO items (id, created_at, note) VALUES (10, TIMESTAMP(UTC_DATE()) - INTERVAL 4 DAY, 'again')",
    );
    let ([_, changed, _], out) = run.run().await;
    assert_eq!(changed, 2, "{out}");
    assert!(!out.contains("deletes:"), "{out}");
    let now = rows(&mut db);
    assert!(now.contains(&"9003|late".to_string()) && now.contains(&"10|again".to_string()));
    run.assert_equal(now, "the late row and the re-inserted key")
        .await;

    // Killed after fetching the keys of the days that differ, then rerun.
    db.exec("DELETE FROM items WHERE id IN (20, 21)");
    run.run_killed_at("detect_deletes.after_keys").await;
    let (_, out) = run.run().await;
    assert!(out.contains("deletes: 2 row(s)"), "{out}");
    run.assert_equal(rows(&mut db), "the rerun after a kill")
        .await;

    let manifest = run.manifest().await;
    let ([_, changed, _], out) = run.run().await;
    assert_eq!(changed, 0, "{out}");
    assert_eq!(run.manifest().await, manifest);
    db.drop();
}

/// Settings that do not fit the table stop it with a message naming the
/// setting and the column, before anything is written.
#[tokio::test(flavor = "multi_thread")]
async fn settings_that_do_not_fit_the_table_are_refused() {
    let name = unique("wmbad");
    let pg = PgDb::create(&name).await;
    pg.exec(
        "CREATE TABLE items (id numeric(10,0) PRIMARY KEY, created_at timestamptz NOT NULL,
                             updated_at bigint NOT NULL, note text);
         INSERT INTO items VALUES (1, now(), 1, 'a');",
    )
    .await;
    for (extra, expected) in [
        (
            "lookback = \"15m\"",
            "lookback is a span of time but the cursor \"updated_at\" is an integer",
        ),
        (
            "detect_deletes = true",
            "detect_deletes needs integer or text key columns; \"id\" is Decimal128(10, 0)",
        ),
        (
            "lookback = \"15 parsecs\"",
            "lookback \"15 parsecs\" is not a span",
        ),
    ] {
        let run = Run::new(&name, "postgres", &pg.url, extra);
        let config = run.config.clone();
        let out = tokio::task::spawn_blocking(move || {
            sluice(&["run", "--config", config.to_str().unwrap()], &[])
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: the run succeeded");
        assert!(stderr.contains(expected), "{extra}:\n{stderr}");
        let objects = list(&s3_store(), &format!("{name}/items/")).await;
        assert!(
            objects.iter().all(|(path, _)| !path.ends_with(".parquet")),
            "{extra}: nothing written: {objects:?}"
        );
    }
    pg.drop().await;
}
