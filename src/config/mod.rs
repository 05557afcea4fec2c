//! The pipeline file: sources, lake, warehouse and tables, as documented serde structs.
//!
//! Loading is three steps, each with its own errors: parse the TOML, replace `${VAR}`
//! in every string value from the environment, then [`Config::validate`] the result
//! before any I/O happens.
//!
//! Long, but one cohesive thing: the structs of the pipeline file and the
//! validation that checks them together (the `[models]` section is in
//! [`models`], the Mongo column types in [`mongo_types`]).

pub mod models;
pub mod mongo_types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ConfigError;

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the Parquet files and the pipeline state live.
    pub lake: LakeConfig,
    /// Named source databases; tables refer to them by name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// The ClickHouse warehouse the lake is loaded into. Optional: without it sluice
    /// stops after committing the lake.
    #[serde(default)]
    pub clickhouse: Option<ClickHouseConfig>,
    /// The tables to move, in the order they run.
    #[serde(default, rename = "table")]
    pub tables: Vec<TableConfig>,
    /// SQL models run over the lake after the tables (see [`models`] and `src/transform/`).
    #[serde(default)]
    pub models: Option<models::ModelsConfig>,
}

/// The lake: a local folder or an S3 bucket with an optional prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// `s3://bucket/prefix` or a local path (relative paths are relative to the
    /// config file). For S3 the endpoint, region and keys come from the standard
    /// `AWS_*` environment variables (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`).
    pub url: String,
    /// Target size of one Parquet file in bytes; a partition larger than this is
    /// written as several files.
    #[serde(default = "default_target_file_bytes")]
    pub target_file_bytes: usize,
    /// Rows per Parquet row group.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
}

fn default_target_file_bytes() -> usize {
    128 * 1024 * 1024
}

fn default_row_group_rows() -> usize {
    256 * 1024
}

/// The kinds of source sluice reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// PostgreSQL, read with connectorx's binary protocol.
    Postgres,
    /// MySQL or MariaDB, read with connectorx.
    Mysql,
    /// A SQLite file, read with connectorx (the embedded demo).
    Sqlite,
    /// A MongoDB database (the URL names it: `mongodb://host:27017/db`), read with
    /// the official driver; its tables use `snapshot`, `snapshot_diff` or
    /// `change_stream` capture.
    Mongodb,
}

/// One source database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// What kind of database this is.
    pub kind: SourceKind,
    /// Connection URL, e.g. `postgres://user:${PGPASSWORD}@host:5432/db`. The
    /// password is never logged.
    pub url: String,
}

/// The ClickHouse warehouse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP interface URL, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database the tables are created in (created if missing).
    pub database: String,
    /// User name.
    #[serde(default = "default_clickhouse_user")]
    pub user: String,
    /// Password; use `${VAR}` to take it from the environment.
    #[serde(default)]
    pub password: String,
    /// The lake's S3 endpoint *as ClickHouse sees it*, e.g. `http://minio:9000` in
    /// docker-compose. Defaults to `AWS_ENDPOINT`.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// ClickHouse partitions (days, or months with `clickhouse_partition =
    /// "month"`) loaded by one `INSERT … SELECT FROM s3()` and one `ALTER TABLE …
    /// REPLACE PARTITION …, …`; at most ClickHouse's `max_partitions_per_insert_block`
    /// on the server (100 by default, which is this default).
    #[serde(default = "default_days_per_load")]
    pub days_per_load: usize,
}

fn default_clickhouse_user() -> String {
    "default".to_string()
}

fn default_days_per_load() -> usize {
    100
}

/// One table to move.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Name in the lake and in ClickHouse.
    pub name: String,
    /// Name of an entry in `[sources]`.
    pub source: String,
    /// Source table, optionally schema-qualified (`public.transactions`). Exactly one
    /// of `source_table` and `query` is set.
    #[serde(default)]
    pub source_table: Option<String>,
    /// A `SELECT` to read instead of a table.
    #[serde(default)]
    pub query: Option<String>,
    /// Column whose value grows whenever a row is inserted or updated
    /// (`updated_at`); rows are read with `cursor >= last watermark`. Required in
    /// `watermark` mode, unused otherwise.
    #[serde(default)]
    pub cursor: String,
    /// Columns that identify a row; re-read and updated rows replace older
    /// versions by this key. Required in `watermark` mode; in the snapshot modes it
    /// defaults to `["_id"]` and must be a single field.
    #[serde(default)]
    pub key: Vec<String>,
    /// Date or timestamp column whose day names the partition
    /// (`<col>=YYYY-MM-DD/`). Must not change once a row exists (a creation time).
    /// Required in `watermark` mode; the snapshot modes partition by
    /// `snapshot_date` / `_change_date` themselves.
    #[serde(default)]
    pub partition_by: String,
    /// How changes are captured: `watermark` (default), `snapshot`,
    /// `snapshot_diff` or `change_stream` (see README, "MongoDB sources").
    #[serde(default)]
    pub mode: CaptureMode,
    /// MongoDB collection to read (sources of kind `mongodb` only; the database is
    /// the one named in the source URL).
    #[serde(default)]
    pub collection: Option<String>,
    /// MongoDB: declared column types by top-level field, overriding what the
    /// sample infers, e.g. `{ age = "int64", price = "decimal(38,2)", address =
    /// "json" }`. Types: string, objectid, int32, int64, double, bool, timestamp,
    /// decimal(P,S), binary, json.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// MongoDB: documents read (in natural order) to infer the schema on the
    /// table's first run; later runs reuse the lake's schema. 0 = declared columns
    /// only.
    #[serde(default = "default_infer_sample")]
    pub infer_sample: usize,
    /// MongoDB: how nested documents and arrays are stored: `struct` (Arrow
    /// Struct / List) or `json` (a relaxed Extended JSON string column).
    #[serde(default)]
    pub nested: NestedMode,
    /// MongoDB: what a value that does not fit its column (or a field not in the
    /// schema) does: `overflow` (kept as JSON in the `_overflow` column) or
    /// `error` (the run fails naming the collection, `_id` and field).
    #[serde(default)]
    pub on_mismatch: MismatchPolicy,
    /// ClickHouse TTL: rows whose partition day is older than this many days are
    /// deleted by ClickHouse and not loaded.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// ClickHouse partition of the table: `day` (`toYYYYMMDD`, the default for
    /// tables captured by watermark and for change tables) or `month`
    /// (`toYYYYMM`, the default for `mode = "snapshot"`: one partition per month
    /// of `snapshot_date`). The lake stays partitioned by day either way; a
    /// month partition is replaced whole, its other days copied from the table.
    #[serde(default)]
    pub clickhouse_partition: Option<PartitionGrain>,
    /// Rows per Arrow batch read from the source.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// MongoDB, `mode = "snapshot"` only: cursors reading disjoint ranges of the
    /// key field (`_id`) at once. 1 (default) is one cursor; `snapshot_diff`
    /// needs one cursor in key order and keeps 1. Each cursor holds up to one
    /// batch (`batch_rows` documents or 32 MiB of BSON) of its own.
    #[serde(default = "default_read_parallelism")]
    pub read_parallelism: usize,
}

/// Largest `read_parallelism`.
pub const MAX_READ_PARALLELISM: usize = 32;

fn default_read_parallelism() -> usize {
    1
}

fn default_batch_rows() -> usize {
    64 * 1024
}

fn default_infer_sample() -> usize {
    1000
}

/// How a table's changes are captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    /// Read rows whose `cursor` is at or past the last watermark (SQL sources).
    #[default]
    Watermark,
    /// Copy the whole source every run into the day's `snapshot_date` partition.
    Snapshot,
    /// Compare the whole source with the last snapshot by key and content hash;
    /// keep the changes (`_op` insert/update/delete) and the current state.
    SnapshotDiff,
    /// Follow the collection's MongoDB change stream from a resume token kept in
    /// the lake: a first snapshot, then each run reads the inserts, updates and
    /// deletes since the last one until caught up (same change rows as
    /// `snapshot_diff`). Needs a replica set (or sharded cluster).
    ChangeStream,
}

/// The span of one ClickHouse partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionGrain {
    /// `PARTITION BY toYYYYMMDD(col)`.
    Day,
    /// `PARTITION BY toYYYYMM(col)`.
    Month,
}

/// How nested MongoDB documents and arrays become columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NestedMode {
    /// Arrow Struct for documents, List for arrays (ClickHouse Tuple / Array).
    #[default]
    Struct,
    /// One relaxed Extended JSON string per value.
    Json,
}

/// What a MongoDB value that does not fit the schema does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchPolicy {
    /// The column gets NULL and the value goes, as JSON under its field path, to
    /// the `_overflow` column: nothing is lost.
    #[default]
    Overflow,
    /// The run fails with an error naming the collection, `_id` and field.
    Error,
}

impl Config {
    /// Reads, interpolates and validates a pipeline file.
    pub fn load(path: &Path) -> Result<(Config, PathBuf), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::from_toml(&text, &|name| std::env::var(name).ok())?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok((config, base))
    }

    /// Parses TOML text, replacing `${VAR}` in string values through `env`.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        interpolate(&mut value, env)?;
        let config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects impossible combinations before any I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |table: &str, field: &str, reason: String| ConfigError::Invalid {
            table: table.to_string(),
            field: field.to_string(),
            reason,
        };
        if self.lake.url.trim().is_empty() {
            return Err(invalid("-", "lake.url", "is empty".into()));
        }
        if self.lake.row_group_rows == 0 || self.lake.target_file_bytes < 1024 * 1024 {
            return Err(invalid(
                "-",
                "lake",
                "row_group_rows must be > 0 and target_file_bytes at least 1 MiB".into(),
            ));
        }
        if let Some(ch) = &self.clickhouse {
            if ch.database.is_empty() {
                return Err(invalid("-", "clickhouse.database", "is empty".into()));
            }
            if !(1..=1000).contains(&ch.days_per_load) {
                return Err(invalid(
                    "-",
                    "clickhouse.days_per_load",
                    format!("is {}; it must be between 1 and 1000", ch.days_per_load),
                ));
            }
            if !self.lake.url.starts_with("s3://") {
                return Err(invalid(
                    "-",
                    "clickhouse",
                    "ClickHouse loads read the lake through s3(); set lake.url to s3://bucket/prefix or remove [clickhouse]".into(),
                ));
            }
        }
        if let Some(models) = &self.models {
            models.validate(self.clickhouse.is_some())?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.tables {
            if t.name.is_empty() || t.name.contains('/') || t.name.starts_with('_') {
                return Err(invalid(
                    &t.name,
                    "name",
                    "must be non-empty, without '/', and not start with '_'".into(),
                ));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(invalid(&t.name, "name", "appears twice".into()));
            }
            if !self.sources.contains_key(&t.source) {
                return Err(invalid(
                    &t.name,
                    "source",
                    format!("no source named {:?} in [sources]", t.source),
                ));
            }
            let mongo = self.sources[&t.source].kind == SourceKind::Mongodb;
            if t.read_parallelism != 1 && !(mongo && t.mode == CaptureMode::Snapshot) {
                return Err(invalid(
                    &t.name,
                    "read_parallelism",
                    "is for MongoDB tables in mode \"snapshot\" (snapshot_diff reads one cursor in key order)".into(),
                ));
            }
            if !(1..=MAX_READ_PARALLELISM).contains(&t.read_parallelism) {
                return Err(invalid(
                    &t.name,
                    "read_parallelism",
                    format!("must be between 1 and {MAX_READ_PARALLELISM}"),
                ));
            }
            if mongo || t.mode != CaptureMode::Watermark {
                validate_snapshot_table(t, mongo)?;
                continue;
            }
            if t.collection.is_some() {
                return Err(invalid(
                    &t.name,
                    "collection",
                    "is only for sources of kind \"mongodb\"".into(),
                ));
            }
            match (&t.source_table, &t.query) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(invalid(
                        &t.name,
                        "source_table/query",
                        "set exactly one of them".into(),
                    ))
                }
            }
            if t.key.is_empty() {
                return Err(invalid(
                    &t.name,
                    "key",
                    "at least one key column is needed to replace updated rows".into(),
                ));
            }
            if t.cursor.is_empty() || t.partition_by.is_empty() {
                return Err(invalid(
                    &t.name,
                    "cursor/partition_by",
                    "must name columns".into(),
                ));
            }
            if t.batch_rows == 0 {
                return Err(invalid(&t.name, "batch_rows", "must be > 0".into()));
            }
        }
        Ok(())
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&TableConfig> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// Checks a table in `snapshot` / `snapshot_diff` / `change_stream` mode (and
/// every MongoDB table).
fn validate_snapshot_table(t: &TableConfig, mongo: bool) -> Result<(), ConfigError> {
    let invalid = |field: &str, reason: &str| ConfigError::Invalid {
        table: t.name.clone(),
        field: field.to_string(),
        reason: reason.to_string(),
    };
    if !mongo {
        return Err(invalid(
            "mode",
            "snapshot, snapshot_diff and change_stream capture read MongoDB sources only (SQL sources use watermark)",
        ));
    }
    if t.mode == CaptureMode::Watermark {
        return Err(invalid(
            "mode",
            "must be \"snapshot\", \"snapshot_diff\" or \"change_stream\" for a MongoDB source (a collection has no watermark column)",
        ));
    }
    if t.mode != CaptureMode::Snapshot && t.clickhouse_partition == Some(PartitionGrain::Month) {
        return Err(invalid(
            "clickhouse_partition",
            "\"month\" is for watermark and snapshot tables; the change and current-state tables of snapshot_diff and change_stream are partitioned by day",
        ));
    }
    match &t.collection {
        Some(c) if !c.is_empty() => {}
        _ => return Err(invalid("collection", "must name the MongoDB collection")),
    }
    if t.source_table.is_some() || t.query.is_some() {
        return Err(invalid(
            "source_table/query",
            "are for SQL sources; a MongoDB table names its `collection`",
        ));
    }
    if !t.cursor.is_empty() || !t.partition_by.is_empty() {
        return Err(invalid(
            "cursor/partition_by",
            "are watermark settings; snapshot tables are partitioned by snapshot_date (or _change_date)",
        ));
    }
    if t.key.len() > 1 || t.key.iter().any(|k| k.is_empty() || k.contains('.')) {
        return Err(invalid(
            "key",
            "must be one top-level field (default [\"_id\"])",
        ));
    }
    // A delete event names its document by `_id` only (documentKey): another key
    // field could not be found for it.
    if t.mode == CaptureMode::ChangeStream && t.key.iter().any(|k| k != "_id") {
        return Err(invalid(
            "key",
            "must be [\"_id\"] (the default) in change_stream mode: delete events carry only the document's _id",
        ));
    }
    if t.batch_rows == 0 {
        return Err(invalid("batch_rows", "must be > 0"));
    }
    for (column, ty) in &t.columns {
        if mongo_types::ColumnType::parse(ty).is_none() {
            return Err(invalid(
                &format!("columns.{column}"),
                &format!("has unknown type {ty:?} (string, objectid, int32, int64, double, bool, timestamp, decimal(P,S), binary, json)"),
            ));
        }
    }
    if t.infer_sample == 0 && t.columns.is_empty() {
        return Err(invalid(
            "infer_sample",
            "is 0 and no `columns` are declared: the table would have no columns",
        ));
    }
    Ok(())
}

impl TableConfig {
    /// The table's ClickHouse partition: as configured, else by month for
    /// snapshots (one snapshot a day) and by day for everything else.
    pub fn clickhouse_grain(&self) -> PartitionGrain {
        self.clickhouse_partition.unwrap_or(match self.mode {
            CaptureMode::Snapshot => PartitionGrain::Month,
            _ => PartitionGrain::Day,
        })
    }

    /// The key fields: `key`, or `["_id"]` for a snapshot table without one.
    pub fn key_fields(&self) -> Vec<String> {
        if self.key.is_empty() && self.mode != CaptureMode::Watermark {
            vec!["_id".to_string()]
        } else {
            self.key.clone()
        }
    }
}

/// Replaces `${VAR}` in every string of the document; `$$` is a literal `$`.
fn interpolate(
    value: &mut toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => *s = interpolate_str(s, env)?,
        toml::Value::Array(items) => {
            for item in items {
                interpolate(item, env)?;
            }
        }
        toml::Value::Table(table) => {
            for (_, item) in table.iter_mut() {
                interpolate(item, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn interpolate_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(idx) = rest.find('$') {
        out.push_str(&rest[..idx]);
        let after = &rest[idx + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| ConfigError::Parse(format!("unclosed ${{ in {:?}", s)))?;
            let name = &body[..end];
            let value = env(name).ok_or_else(|| ConfigError::MissingEnv(name.to_string()))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [lake]
        url = "s3://lake/prefix"

        [sources.pg]
        kind = "postgres"
        url = "postgres://u:${PGPASS}@localhost/db"

        [clickhouse]
        url = "http://localhost:8123"
        database = "analytics"

        [[table]]
        name = "transactions"
        source = "pg"
        source_table = "public.transactions"
        cursor = "updated_at"
        key = ["id"]
        partition_by = "created_at"
    "#;

    fn env(name: &str) -> Option<String> {
        (name == "PGPASS").then(|| "s3cret".to_string())
    }

    #[test]
    fn parses_and_interpolates() {
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        assert_eq!(c.sources["pg"].url, "postgres://u:s3cret@localhost/db");
        assert_eq!(c.tables[0].batch_rows, default_batch_rows());
    }

    #[test]
    fn missing_env_is_named() {
        let err = Config::from_toml(MINIMAL, &|_| None).unwrap_err();
        assert_eq!(err.to_string(), "environment variable PGPASS is not set");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let text = MINIMAL.replace("cursor = ", "cursr = \"x\"\ncursor = ");
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("unknown field `cursr`"), "{err}");
    }

    #[test]
    fn table_without_key_is_rejected() {
        let text = MINIMAL.replace("key = [\"id\"]", "key = []");
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("transactions") && err.contains("key"), "{err}");
    }

    #[test]
    fn days_per_load_defaults_to_clickhouse_limit_and_is_bounded() {
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        assert_eq!(c.clickhouse.unwrap().days_per_load, 100);
        let text = MINIMAL.replace(
            "database = \"analytics\"",
            "database = \"analytics\"\ndays_per_load = 0",
        );
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("clickhouse.days_per_load"), "{err}");
    }

    #[test]
    fn change_stream_needs_a_mongodb_source_and_the_id_key() {
        let mongo = r#"
            [lake]
            url = "s3://lake/prefix"
            [sources.app]
            kind = "mongodb"
            url = "mongodb://127.0.0.1:27017/app"
            [[table]]
            name = "users"
            source = "app"
            collection = "users"
            mode = "change_stream"
        "#;
        let c = Config::from_toml(mongo, &env).unwrap();
        assert_eq!(c.tables[0].mode, CaptureMode::ChangeStream);
        assert_eq!(c.tables[0].key_fields(), vec!["_id".to_string()]);
        let err = Config::from_toml(&format!("{mongo}key = [\"uid\"]\n"), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("users") && err.contains("_id"), "{err}");
        let err = Config::from_toml(&format!("{mongo}change_strem = 1\n"), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `change_strem`"), "{err}");
        let sql = MINIMAL.replace(
            "partition_by = \"created_at\"",
            "partition_by = \"created_at\"\nmode = \"change_stream\"",
        );
        let err = Config::from_toml(&sql, &env).unwrap_err().to_string();
        assert!(err.contains("MongoDB sources only"), "{err}");
    }

    #[test]
    fn read_parallelism_is_for_mongodb_snapshots() {
        let mongo = |mode: &str, n: usize| {
            format!(
                "[lake]\nurl = \"/tmp/l\"\n[sources.m]\nkind = \"mongodb\"\nurl = \"mongodb://h/db\"\n\
                 [[table]]\nname = \"users\"\nsource = \"m\"\ncollection = \"users\"\nmode = \"{mode}\"\nread_parallelism = {n}\n"
            )
        };
        let c = Config::from_toml(&mongo("snapshot", 4), &env).unwrap();
        assert_eq!(c.tables[0].read_parallelism, 4);
        for (text, expected) in [
            (mongo("snapshot_diff", 2), "snapshot_diff reads one cursor"),
            (mongo("snapshot", 0), "between 1 and"),
            (mongo("snapshot", 33), "between 1 and"),
            (
                MINIMAL.replace("partition_by", "read_parallelism = 2\npartition_by"),
                "read_parallelism",
            ),
        ] {
            let err = Config::from_toml(&text, &env).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        assert_eq!(c.tables[0].read_parallelism, 1);
    }

    #[test]
    fn dollar_escapes() {
        assert_eq!(interpolate_str("a$$b$c", &env).unwrap(), "a$b$c");
    }
}
