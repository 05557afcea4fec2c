//! Nothing lost, nothing duplicated: `sluice run` is killed at every commit-relevant
//! point (fault injection through `SLUICE_FAULT`) and at random times, then rerun to
//! completion; the lake and ClickHouse must then equal the source exactly.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const ROWS: &str = "SELECT id::text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), payload FROM events e ORDER BY e.id";

struct Scenario {
    name: String,
    pg: PgDb,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Scenario {
    async fn new(test: &str, rows: i64) -> Self {
        let name = unique(test);
        let pg = PgDb::create(&name).await;
        pg.exec(&format!(
            "CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
                                  updated_at timestamptz NOT NULL, payload text);
             INSERT INTO events
             SELECT g, date_trunc('day', now()) - (g % 4) * interval '1 day' + (g % 1000) * interval '1 second',
                    now() - interval '1 hour' + (g % 13) * interval '1 millisecond', 'v1-' || g
             FROM generate_series(1, {rows}) g;"
        ))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            &dir,
            &format!(
                r#"
[lake]
url = "s3://{bucket}/{name}"

[sources.app]
kind = "postgres"
url = "{pg}"

[clickhouse]
url = "{ch}"
database = "{name}"
s3_endpoint = "{ch_s3}"
# Two days per load statement, so that a crash can fall between two batches.
days_per_load = 2

[[table]]
name = "events"
source = "app"
source_table = "events"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
retention_days = 30
batch_rows = 100
"#,
                bucket = s3_bucket(),
                pg = pg.url,
                ch = clickhouse_url(),
                ch_s3 = clickhouse_s3_endpoint(),
            ),
        );
        Self {
            name,
            pg,
            dir,
            config,
        }
    }

    /// Updates rows on every day (so each partition is merged), inserts new rows,
    /// some at exactly the current watermark.
    async fn change(&self) {
        self.pg
            .exec(
                "UPDATE events SET payload = 'v2-' || id, updated_at = now() WHERE id % 10 = 3;
                 INSERT INTO events
                 SELECT g, now() - (g % 3) * interval '1 day', (SELECT max(updated_at) FROM events), 'new-' || g
                 FROM generate_series(100001, 100150) g;",
            )
            .await;
    }

    async fn run_ok(&self) {
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || sluice_run_ok(&config))
            .await
            .unwrap();
    }

    /// Runs with a fault point armed; the process must die there.
    async fn run_killed_at(&self, fault: &str) {
        let config = self.config.clone();
        let armed = fault.to_string();
        let out = tokio::task::spawn_blocking(move || {
            sluice(
                &["run", "--config", config.to_str().unwrap()],
                &[("SLUICE_FAULT", &armed)],
            )
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the run survived its fault {fault}:\n{stderr}"
        );
        let point = fault.split('@').next().unwrap();
        assert!(
            stderr.contains(&format!("fault injected at {point}")),
            "the run failed before reaching the fault point:\n{stderr}"
        );
    }

    /// Starts a run and kills it (SIGKILL) after `delay`.
    async fn run_killed_after(&self, delay: Duration) {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--quiet", "run", "--config", self.config.to_str().unwrap()])
            .envs(s3_env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(delay).await;
        let _ = child.kill();
        let _ = child.wait();
    }

    async fn assert_consistent(&self, case: &str) {
        let source = self.pg.lines(ROWS).await;
        let warehouse = ch_lines(&format!(
            "SELECT id, formatDateTime(created_at, '%Y-%m-%d %H:%i:%S.%f'), \
             formatDateTime(updated_at, '%Y-%m-%d %H:%i:%S.%f'), payload FROM `{}`.events ORDER BY id",
            self.name
        ))
        .await;
        assert_eq!(
            source.len(),
            warehouse.len(),
            "{case}: ClickHouse row count"
        );
        assert!(
            source == warehouse,
            "{case}: ClickHouse rows differ from the source"
        );

        // The lake: the manifest lists exactly the Parquet objects present, and they
        // hold every source id once.
        let store = s3_store();
        let prefix = format!("{}/events", self.name);
        assert_lake_settled(&store, &prefix, case).await;
        let mut ids: Vec<String> = read_parquet_under(&store, &prefix)
            .await
            .iter()
            .flat_map(|b| {
                let a = b.column_by_name("id").unwrap();
                let a = a
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap();
                a.values().iter().map(|v| v.to_string()).collect::<Vec<_>>()
            })
            .collect();
        ids.sort_by_key(|s| s.parse::<i64>().unwrap());
        let source_ids: Vec<String> = source
            .iter()
            .map(|l| l.split('|').next().unwrap().to_string())
            .collect();
        assert_eq!(ids, source_ids, "{case}: ids in the lake's Parquet files");
    }

    async fn finish(self) {
        drop(self.dir);
        self.pg.drop().await;
    }
}

/// The lake table under `prefix` has no day pending for ClickHouse, and its
/// live files plus the replaced files kept for time travel are exactly the
/// Parquet objects in its folder (no stray file).
async fn assert_lake_settled(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    prefix: &str,
    case: &str,
) {
    let (lake_prefix, table) = prefix.rsplit_once('/').unwrap();
    let manifest = s3_table_state(lake_prefix, table).await;
    // Files that commits replaced stay for time travel (`keep_versions_days`).
    let kept = s3_kept_files(lake_prefix, table).await;
    assert!(
        manifest["pending_warehouse"].as_array().unwrap().is_empty(),
        "{case}: {prefix} has days pending for ClickHouse"
    );
    let live: BTreeSet<String> = manifest["partitions"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["files"].as_array().unwrap().iter())
        .map(|f| format!("{prefix}/{}", f["path"].as_str().unwrap()))
        .chain(kept)
        .collect();
    let present: BTreeSet<String> = list(store, prefix)
        .await
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.ends_with(".parquet") && !p.contains("/_delta_log/"))
        .collect();
    assert_eq!(
        live, present,
        "{case}: live files vs objects in the table folder {prefix}"
    );
}

/// Killed during the first (full) load, then rerun.
async fn first_load_case(fault: &str) {
    let s = Scenario::new("crash_first", 2000).await;
    s.run_killed_at(fault).await;
    s.run_ok().await;
    s.assert_consistent(&format!("first load, killed at {fault}"))
        .await;
    s.finish().await;
}

/// Killed during an incremental run that merges changes into every partition.
async fn incremental_case(fault: &str) {
    let s = Scenario::new("crash_incr", 2000).await;
    s.run_ok().await;
    s.change().await;
    s.run_killed_at(fault).await;
    s.run_ok().await;
    s.assert_consistent(&format!("incremental, killed at {fault}"))
        .await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_during_first_load() {
    for fault in [
        "extract.batch@1",
        "extract.batch@7",
        "lake.file_closed@1",
        "lake.file_closed@3",
        "lake.before_commit",
        "lake.after_commit",
        "warehouse.after_stage_insert@1",
        "warehouse.after_stage_insert@2",
        "warehouse.after_replace@1",
        "warehouse.after_replace@2",
        "run.before_final_commit",
        "run.after_final_commit",
    ] {
        first_load_case(fault).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_during_incremental_run() {
    for fault in [
        "extract.batch@1",
        "lake.file_closed@2",
        "merge.batch@1",
        "merge.batch@3",
        "lake.before_commit",
        "lake.after_commit",
        "lake.after_delete",
        "warehouse.after_stage_insert@2",
        "warehouse.after_replace@1",
        "warehouse.after_replace@2",
        "run.before_final_commit",
        "run.after_final_commit",
    ] {
        incremental_case(fault).await;
    }
}

/// SIGKILL at fixed delays into an incremental run over a larger table, wherever
/// the run happens to be.
#[tokio::test(flavor = "multi_thread")]
async fn killed_at_random_times() {
    for delay_ms in [40u64, 120, 250, 400, 650, 1000] {
        let s = Scenario::new("crash_time", 20_000).await;
        s.run_ok().await;
        s.change().await;
        s.run_killed_after(Duration::from_millis(delay_ms)).await;
        s.run_ok().await;
        s.assert_consistent(&format!("killed after {delay_ms} ms"))
            .await;
        s.finish().await;
    }
}

/// Two runs of one config at once: the second one exits with "already running"
/// (exit code 7) and touches nothing; after the first finishes, a run succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn second_concurrent_run_is_refused() {
    let s = Scenario::new("lock", 20_000).await;
    let first = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--quiet", "run", "--config", s.config.to_str().unwrap()])
        .envs(s3_env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = object_store::path::Path::from(format!("{}/events/_lock.json", s.name));
    let store = s3_store();
    let mut held = false;
    for _ in 0..200 {
        use object_store::ObjectStoreExt;
        if store.head(&lock).await.is_ok() {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "the first run never took its lock");
    let config = s.config.clone();
    let second = tokio::task::spawn_blocking(move || {
        sluice(&["run", "--config", config.to_str().unwrap()], &[])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("table events is already being written by run"),
        "{stderr}"
    );
    let first = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    {
        use object_store::ObjectStoreExt;
        assert!(
            store.head(&lock).await.is_err(),
            "the lock is released at the end"
        );
    }
    s.run_ok().await;
    s.assert_consistent("after a refused concurrent run").await;
    s.finish().await;
}

// ---------------------------------------------------------------------------
// Snapshot and snapshot-diff tables go through the same driver (commit, load,
// final commit) and so have the same crash points as the watermark tables.

mod snapshot_modes {
    use super::*;
    use mongodb::bson::{doc, oid::ObjectId, Document};

    fn oid(n: u32) -> ObjectId {
        let mut bytes = [0u8; 12];
        bytes[0] = 0x65;
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        ObjectId::from_bytes(bytes)
    }

    fn day(offset: i64) -> String {
        (chrono::Utc::now() + chrono::Duration::days(offset))
            .format("%Y-%m-%d")
            .to_string()
    }

    struct MongoScenario {
        name: String,
        mode: &'static str,
        coll: mongodb::Collection<Document>,
        _dir: tempfile::TempDir,
        config: std::path::PathBuf,
    }

    impl MongoScenario {
        async fn new(mode: &'static str) -> Self {
            let name = unique(&format!("crash_{mode}"));
            let client = mongodb::Client::with_uri_str(mongo_url(&name))
                .await
                .unwrap_or_else(|e| panic!("MongoDB (run scripts/services.sh up): {e}"));
            let coll = client.database(&name).collection("users");
            coll.insert_many(
                (1..=40).map(|n| doc! { "_id": oid(n), "n": n as i64, "state": "v1" }),
            )
            .await
            .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let config = write_config(
                &dir,
                &format!(
                    r#"
[lake]
url = "s3://{bucket}/{name}"

[sources.app]
kind = "mongodb"
url = "{mongo}"

[clickhouse]
url = "{ch}"
database = "{name}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "users"
source = "app"
collection = "users"
mode = "{mode}"
batch_rows = 7
"#,
                    bucket = s3_bucket(),
                    mongo = mongo_url(&name),
                    ch = clickhouse_url(),
                    ch_s3 = clickhouse_s3_endpoint(),
                ),
            );
            Self {
                name,
                mode,
                coll,
                _dir: dir,
                config,
            }
        }

        fn run(&self, day: &str, fault: Option<&str>) -> std::process::Output {
            let mut env = vec![("SLUICE_SNAPSHOT_DATE", day)];
            if let Some(fault) = fault {
                env.push(("SLUICE_FAULT", fault));
            }
            sluice(&["run", "--config", self.config.to_str().unwrap()], &env)
        }

        /// Inserts, updates and deletes a few documents.
        async fn change(&self) {
            self.coll
                .insert_many(
                    (41..=43).map(|n| doc! { "_id": oid(n), "n": n as i64, "state": "new" }),
                )
                .await
                .unwrap();
            self.coll
                .update_many(
                    doc! { "n": { "$in": [2i64, 5, 9, 11] } },
                    doc! { "$set": { "state": "v2" } },
                )
                .await
                .unwrap();
            self.coll
                .delete_many(doc! { "n": { "$in": [3i64, 4] } })
                .await
                .unwrap();
        }

        /// The collection as `n|state` lines, sorted by `n`.
        async fn source(&self) -> Vec<String> {
            use futures::TryStreamExt;
            let docs: Vec<Document> = self
                .coll
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let mut lines: Vec<(i64, String)> = docs
                .iter()
                .map(|d| {
                    let n = d.get_i64("n").unwrap();
                    (n, format!("{n}|{}", d.get_str("state").unwrap()))
                })
                .collect();
            lines.sort();
            lines.into_iter().map(|(_, l)| l).collect()
        }

        /// ClickHouse and the lake equal the collection for `today`, and nothing
        /// is pending or left over.
        async fn assert_consistent(&self, today: &str, case: &str) {
            let source = self.source().await;
            let db = &self.name;
            match self.mode {
                "snapshot" => {
                    let ch = ch_lines(&format!(
                        "SELECT n, state FROM `{db}`.users WHERE snapshot_date = '{today}' ORDER BY n"
                    ))
                    .await;
                    assert_eq!(ch, source, "{case}: today's snapshot in ClickHouse");
                    let yesterday = ch_lines(&format!(
                        "SELECT count() FROM `{db}`.users WHERE snapshot_date = '{}'",
                        day(-1)
                    ))
                    .await;
                    assert_eq!(yesterday, vec!["40"], "{case}: yesterday's snapshot kept");
                }
                _ => {
                    let current = ch_lines(&format!(
                        "SELECT n, state FROM `{db}`.users_current FINAL WHERE _is_deleted = 0 ORDER BY n"
                    ))
                    .await;
                    assert_eq!(current, source, "{case}: users_current FINAL");
                    // 3 inserts, 4 updates, 2 deletes: each once.
                    let changes = ch_lines(&format!(
                        "SELECT _op, count() FROM `{db}`.users WHERE _change_date = '{today}' GROUP BY _op ORDER BY _op"
                    ))
                    .await;
                    assert_eq!(
                        changes,
                        vec!["delete|2", "insert|3", "update|4"],
                        "{case}: today's change rows"
                    );
                }
            }
            let store = s3_store();
            for table in match self.mode {
                "snapshot" => vec!["users"],
                _ => vec!["users", "users_current"],
            } {
                assert_lake_settled(&store, &format!("{db}/{table}"), case).await;
            }
            // The lake's rows of today equal the source's count.
            let (table, column) = match self.mode {
                "snapshot" => ("users", "snapshot_date"),
                _ => ("users_current", "snapshot_date"),
            };
            let rows: usize =
                read_parquet_under(&store, &format!("{db}/{table}/{column}_day={today}/"))
                    .await
                    .iter()
                    .map(|b| b.num_rows())
                    .sum();
            assert_eq!(rows, source.len(), "{case}: lake rows of {today}");
        }

        async fn finish(self) {
            ch_exec(&format!("DROP DATABASE IF EXISTS `{}`", self.name)).await;
            ch_exec(&format!("DROP DATABASE IF EXISTS `{}_sluice`", self.name)).await;
        }
    }

    /// Day 1 loads; day 2 (after changes) is killed at `fault`, then rerun.
    async fn case(mode: &'static str, fault: &str) {
        let s = MongoScenario::new(mode).await;
        let (day1, day2) = (day(-1), day(0));
        let first = s.run(&day1, None);
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        s.change().await;
        let killed = s.run(&day2, Some(fault));
        let stderr = String::from_utf8_lossy(&killed.stderr);
        assert!(
            !killed.status.success(),
            "{mode}: the run survived its fault {fault}:\n{stderr}"
        );
        let point = fault.split('@').next().unwrap();
        assert!(
            stderr.contains(&format!("fault injected at {point}")),
            "{mode}: the run failed before reaching {fault}:\n{stderr}"
        );
        let rerun = s.run(&day2, None);
        assert!(
            rerun.status.success(),
            "{}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        s.assert_consistent(&day2, &format!("{mode}, killed at {fault}"))
            .await;
        s.finish().await;
    }

    const FAULTS: [&str; 8] = [
        "lake.file_closed@1",
        "lake.before_commit",
        "lake.after_commit",
        "lake.after_delete",
        "warehouse.after_stage_insert",
        "warehouse.after_replace",
        "run.before_final_commit",
        "run.after_final_commit",
    ];

    #[tokio::test(flavor = "multi_thread")]
    async fn snapshot_killed_at_every_point() {
        for fault in FAULTS {
            case("snapshot", fault).await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn snapshot_diff_killed_at_every_point() {
        for fault in FAULTS {
            case("snapshot_diff", fault).await;
        }
    }
}
