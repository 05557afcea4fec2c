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
pub mod table;

pub use table::{
    CaptureConfig, CaptureMode, Lookback, MongoConfig, TableConfig, WatermarkConfig,
    MAX_READ_PARALLELISM,
};

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
    /// Days a file that a commit replaced stays in the lake, so that older
    /// versions of the table can still be read (`sluice query --as-of`, a Delta
    /// reader's time travel); 0 deletes it right after the commit.
    #[serde(default = "default_keep_versions_days")]
    pub keep_versions_days: u32,
}

fn default_keep_versions_days() -> u32 {
    7
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
            t.validate(mongo)?;
        }
        Ok(())
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&TableConfig> {
        self.tables.iter().find(|t| t.name == name)
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
        assert_eq!(c.tables[0].batch_rows, 64 * 1024);
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
        assert_eq!(c.tables[0].mode(), CaptureMode::ChangeStream);
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
        assert_eq!(c.tables[0].mongo().unwrap().read_parallelism, 4);
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
        assert!(
            c.tables[0].mongo().is_none(),
            "a watermark table has no MongoDB settings"
        );
    }

    #[test]
    fn a_setting_of_another_mode_is_refused_naming_it() {
        let mongo = "[lake]\nurl = \"/tmp/l\"\n[sources.m]\nkind = \"mongodb\"\nurl = \"mongodb://h/db\"\n\
                     [[table]]\nname = \"users\"\nsource = \"m\"\ncollection = \"users\"\nmode = \"snapshot_diff\"\n";
        let c = Config::from_toml(mongo, &env).unwrap();
        match &c.tables[0].capture {
            CaptureConfig::SnapshotDiff(m) => assert_eq!(m.collection, "users"),
            other => panic!("{other:?}"),
        }
        for (extra, expected) in [
            ("cursor = \"updated_at\"\n", "watermark settings"),
            ("query = \"SELECT 1\"\n", "are for SQL sources"),
        ] {
            let err = Config::from_toml(&format!("{mongo}{extra}"), &env)
                .unwrap_err()
                .to_string();
            assert!(err.contains("users") && err.contains(expected), "{err}");
        }
        for (extra, field) in [
            ("infer_sample = 10\npartition_by", "infer_sample"),
            ("nested = \"json\"\npartition_by", "nested"),
            ("collection = \"t\"\npartition_by", "collection"),
        ] {
            let text = MINIMAL.replace("partition_by", extra);
            let err = Config::from_toml(&text, &env).unwrap_err().to_string();
            assert!(
                err.contains("transactions") && err.contains(field),
                "{field}: {err}"
            );
        }
        match &Config::from_toml(MINIMAL, &env).unwrap().tables[0].capture {
            CaptureConfig::Watermark(w) => {
                assert_eq!(
                    (w.cursor.as_str(), w.partition_by.as_str()),
                    ("updated_at", "created_at")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dollar_escapes() {
        assert_eq!(interpolate_str("a$$b$c", &env).unwrap(), "a$b$c");
    }
}
