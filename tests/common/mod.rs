//! Shared test harness: the real services started by `scripts/services.sh up`,
//! one database / bucket prefix / ClickHouse database per test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// The test MongoDB (SecantusDB or a replica set) with database `db`.
pub fn mongo_url(db: &str) -> String {
    let base = env_or("SLUICE_TEST_MONGO_URL", "mongodb://127.0.0.1:27017");
    let base = base.split('?').next().unwrap().trim_end_matches('/');
    format!("{base}/{db}?directConnection=true")
}

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn pg_url() -> String {
    env_or(
        "SLUICE_TEST_PG_URL",
        "postgres://sluice:sluice@127.0.0.1:5432/sluice",
    )
}

/// The S3 endpoint as ClickHouse sees it (`http://minio:9000` under docker-compose).
pub fn clickhouse_s3_endpoint() -> String {
    env_or("SLUICE_TEST_CH_S3_ENDPOINT", "http://127.0.0.1:9000")
}

pub fn clickhouse_url() -> String {
    env_or("SLUICE_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123")
}

/// The S3 settings of the test server, as `AWS_*` variables.
pub fn s3_env() -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT", "http://127.0.0.1:9000"),
        ("AWS_ACCESS_KEY_ID", "sluiceaccess"),
        ("AWS_SECRET_ACCESS_KEY", "sluicesecret123"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), env_or(k, v)))
    .collect()
}

pub fn s3_bucket() -> String {
    env_or("SLUICE_TEST_BUCKET", "lake")
}

/// A name unique to this test and this process, usable as a database name.
pub fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t_{test}_{}_{nanos:x}", std::process::id())
}

/// A PostgreSQL database of its own for one test, dropped at the end.
pub struct PgDb {
    pub name: String,
    pub url: String,
    pub client: tokio_postgres::Client,
    admin: tokio_postgres::Client,
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} (run scripts/services.sh up): {e}"));
    tokio::spawn(conn);
    client
}

impl PgDb {
    pub async fn create(name: &str) -> Self {
        let admin_url = pg_url();
        let admin = connect(&admin_url).await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let base = admin_url.rsplit_once('/').unwrap().0;
        let url = format!("{base}/{name}");
        let client = connect(&url).await;
        Self {
            name: name.to_string(),
            url,
            client,
            admin,
        }
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Rows of a query, each as its text columns joined with `|`.
    pub async fn lines(&self, sql: &str) -> Vec<String> {
        let rows = self
            .client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        row.get::<_, Option<String>>(i)
                            .unwrap_or_else(|| "\\N".into())
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect()
    }

    pub async fn drop(self) {
        drop(self.client);
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// ClickHouse through the `clickhouse` crate.
pub fn clickhouse() -> clickhouse::Client {
    clickhouse::Client::default().with_url(clickhouse_url())
}

/// Rows of a ClickHouse query as TabSeparated lines, with tabs turned into `|`.
pub async fn ch_lines(sql: &str) -> Vec<String> {
    ch_lines_in(sql, "TabSeparated").await
}

/// Like [`ch_lines`] but unescaped (`TabSeparatedRaw`): values hold no tabs or
/// newlines, and quotes and backslashes appear as they are.
pub async fn ch_lines_raw(sql: &str) -> Vec<String> {
    ch_lines_in(sql, "TabSeparatedRaw").await
}

async fn ch_lines_in(sql: &str, format: &str) -> Vec<String> {
    let mut cursor = clickhouse()
        .query_raw(sql)
        .fetch_bytes(format)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut bytes = Vec::new();
    while let Some(chunk) = cursor.next().await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| l.replace('\t', "|"))
        .collect()
}

pub async fn ch_exec(sql: &str) {
    clickhouse()
        .query_raw(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The test S3 bucket as an object store.
pub fn s3_store() -> Arc<dyn ObjectStore> {
    let env: std::collections::HashMap<_, _> = s3_env().into_iter().collect();
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(&env["AWS_ENDPOINT"])
            .with_access_key_id(&env["AWS_ACCESS_KEY_ID"])
            .with_secret_access_key(&env["AWS_SECRET_ACCESS_KEY"])
            .with_region(&env["AWS_REGION"])
            .with_allow_http(true)
            .with_bucket_name(s3_bucket())
            .build()
            .unwrap(),
    )
}

/// Every object under `prefix`, with its size, sorted.
pub async fn list(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<(String, u64)> {
    let mut out: Vec<_> = store
        .list(Some(&ObjectPath::from(prefix)))
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    out.sort();
    out
}

/// Reads the Parquet objects under `prefix` into batches: when `prefix` is (in)
/// a lake table, only the files its current Delta version lists (not those
/// kept for time travel, nor a dead run's), else every one.
pub async fn read_parquet_under(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<RecordBatch> {
    let live = live_files_under(prefix).await;
    let mut batches = Vec::new();
    for (path, _) in list(store, prefix).await {
        if !path.ends_with(".parquet") || path.contains("/_delta_log/") {
            continue;
        }
        if live.as_ref().is_some_and(|live| !live.contains(&path)) {
            continue;
        }
        let bytes = store
            .get(&ObjectPath::from(path.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            batches.push(batch.unwrap());
        }
    }
    batches
}

/// The object paths of the live files of the S3 lake table that `prefix` is
/// or is in (`<lake prefix>/<table>[/<column>_day=DAY/]`); `None` when there
/// is no such table.
async fn live_files_under(prefix: &str) -> Option<std::collections::BTreeSet<String>> {
    let segments: Vec<&str> = prefix.trim_end_matches('/').split('/').collect();
    let end = segments
        .iter()
        .position(|s| s.contains('='))
        .unwrap_or(segments.len());
    let root = segments[..end].join("/");
    let (lake_prefix, table) = root.rsplit_once('/')?;
    let state = s3_table_state(lake_prefix, table).await;
    let partitions = state["partitions"].as_object()?;
    Some(
        partitions
            .values()
            .flat_map(|p| p["files"].as_array().cloned().unwrap_or_default())
            .map(|f| format!("{root}/{}", f["path"].as_str().unwrap()))
            .collect(),
    )
}

/// Runs the `sluice` binary with the test S3 environment.
pub fn sluice(args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args);
    for (k, v) in s3_env() {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("sluice runs")
}

/// Runs `sluice run --config FILE` and panics with its output unless it succeeds.
pub fn sluice_run_ok(config: &Path) -> String {
    let out = sluice(&["run", "--config", config.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "sluice run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// A temporary folder holding a config file.
pub fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The lake at `url` (`s3://bucket/prefix` or a folder), opened in-process.
pub fn open_lake(url: &str) -> sluice::lake::Lake {
    // Lake::open reads the AWS_* variables: set once, before any handle opens.
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| {
        for (k, v) in s3_env() {
            std::env::set_var(k, v);
        }
    });
    let config: sluice::config::LakeConfig = toml::from_str(&format!("url = {url:?}")).unwrap();
    sluice::lake::Lake::open(&config, Path::new("/")).unwrap()
}

/// The committed state of lake table `table` in the S3 lake under `prefix`:
/// what sluice keeps in the table's Delta log (position, schema, pending days),
/// with `partitions` holding the live files by day. `Null` for no table.
pub async fn s3_table_state(prefix: &str, table: &str) -> serde_json::Value {
    table_state(&format!("s3://{}/{prefix}", s3_bucket()), table).await
}

/// [`s3_table_state`] for any lake URL (a local folder too).
pub async fn table_state(lake_url: &str, table: &str) -> serde_json::Value {
    let lake = open_lake(lake_url);
    match lake.read_manifest(table).await.unwrap() {
        Some(m) => serde_json::to_value(m).unwrap(),
        None => serde_json::Value::Null,
    }
}

/// The object paths of the files that commits of the S3 lake table removed
/// and that are kept for time travel (`keep_versions_days`).
pub async fn s3_kept_files(prefix: &str, table: &str) -> std::collections::BTreeSet<String> {
    let lake = open_lake(&format!("s3://{}/{prefix}", s3_bucket()));
    lake.read_manifest(table).await.unwrap();
    lake.removed_files(table)
        .await
        .unwrap()
        .into_keys()
        .map(|p| format!("{prefix}/{table}/{p}"))
        .collect()
}

/// [`table_state`] from a synchronous test (a runtime of its own).
pub fn table_state_blocking(lake_url: &str, table: &str) -> serde_json::Value {
    let lake_url = lake_url.to_string();
    let table = table.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(table_state(&lake_url, &table))
    })
    .join()
    .unwrap()
}
