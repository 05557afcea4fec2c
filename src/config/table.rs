//! One `[[table]]` of the pipeline file: what every table has (name, source,
//! key, ClickHouse layout), and its capture mode with that mode's own settings,
//! one type per mode ([`CaptureConfig`]), each with its own `validate()`.
//!
//! The file stays one flat table per `[[table]]` (`mode = "…"` beside the
//! settings): it is read as [`TableFile`] (`deny_unknown_fields`, so a typo is an
//! error) and turned into the mode's type. A setting of another mode (a
//! `cursor` on a MongoDB snapshot, a `collection` on a watermark table) is kept
//! aside and refused by [`TableConfig::validate`], which knows the source's kind
//! and so can say what the table should use instead.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::mongo_types::ColumnType;
use super::{MismatchPolicy, NestedMode, PartitionGrain};
use crate::error::ConfigError;

/// Largest `read_parallelism`.
pub const MAX_READ_PARALLELISM: usize = 32;

/// One table to move.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Name in the lake and in ClickHouse.
    pub name: String,
    /// Name of an entry in `[sources]`.
    pub source: String,
    /// Columns that identify a row; re-read and updated rows replace older
    /// versions by this key. Required in `watermark` mode; in the MongoDB modes it
    /// defaults to `["_id"]` and must be a single field.
    pub key: Vec<String>,
    /// ClickHouse TTL: rows whose partition day is older than this many days are
    /// deleted by ClickHouse and not loaded.
    pub retention_days: Option<u32>,
    /// ClickHouse partition of the table: `day` or `month` (see
    /// [`TableConfig::clickhouse_grain`] for the defaults).
    pub clickhouse_partition: Option<PartitionGrain>,
    /// Rows per Arrow batch read from the source.
    pub batch_rows: usize,
    /// How changes are captured, with the mode's own settings.
    pub capture: CaptureConfig,
    /// Settings of another capture mode that the file sets: refused by `validate`.
    stray: Vec<&'static str>,
}

/// How a table's changes are captured, and that mode's settings.
#[derive(Debug, Clone, PartialEq)]
pub enum CaptureConfig {
    /// Read rows whose `cursor` is at or past the last watermark (SQL sources).
    Watermark(WatermarkConfig),
    /// Copy the whole collection every run into the day's `snapshot_date`
    /// partition.
    Snapshot(MongoConfig),
    /// Compare the whole collection with the last snapshot by key and content
    /// hash; keep the changes (`_op` insert/update/delete) and the current state.
    SnapshotDiff(MongoConfig),
    /// Follow the collection's change stream from a resume token kept in the lake:
    /// a first snapshot, then each run reads the changes since the last one until
    /// caught up. Needs a replica set (or sharded cluster).
    ChangeStream(MongoConfig),
}

/// The capture mode alone, as `mode = "…"` names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    #[default]
    Watermark,
    Snapshot,
    SnapshotDiff,
    ChangeStream,
}

/// Watermark capture of a SQL table or query.
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkConfig {
    /// Source table, optionally schema-qualified (`public.transactions`). Exactly
    /// one of `source_table` and `query` is set.
    pub source_table: Option<String>,
    /// A `SELECT` to read instead of a table.
    pub query: Option<String>,
    /// Column whose value grows whenever a row is inserted or updated
    /// (`updated_at`); rows are read with `cursor >= last watermark`.
    pub cursor: String,
    /// Date or timestamp column whose day names the partition
    /// (`<col>=YYYY-MM-DD/`). Must not change once a row exists (a creation time).
    pub partition_by: String,
    /// Also read this window below the watermark every run, for cursors set by
    /// the application (or another clock) rather than by the database's commit
    /// order. Rows read again unchanged are dropped by key and content.
    pub lookback: Option<Lookback>,
    /// Each run compares, day by day, the source's keys with the lake's (a count
    /// and a fingerprint) and deletes from the lake and ClickHouse the keys the
    /// source no longer has.
    pub detect_deletes: bool,
}

/// How far below the watermark a run reads again (`lookback = "15m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Lookback {
    /// A span of time, for timestamp and date cursors: `"90s"`, `"15m"`, `"2h"`,
    /// `"1d"`.
    Span { micros: i64 },
    /// A number of cursor values, for integer cursors: `"1000"`.
    Count(i64),
}

impl TryFrom<String> for Lookback {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "lookback {text:?} is not a span (\"90s\", \"15m\", \"2h\", \"1d\") or a count of an integer cursor (\"1000\")"
            )
        };
        let t = text.trim();
        if let Ok(count) = t.parse::<i64>() {
            return if count >= 0 {
                Ok(Lookback::Count(count))
            } else {
                Err(bad())
            };
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = t.split_at(split);
        let number: i64 = number.parse().map_err(|_| bad())?;
        let unit_micros: i64 = match unit.trim() {
            "s" => 1_000_000,
            "m" => 60 * 1_000_000,
            "h" => 3_600 * 1_000_000,
            "d" => 86_400 * 1_000_000,
            _ => return Err(bad()),
        };
        number
            .checked_mul(unit_micros)
            .map(|micros| Lookback::Span { micros })
            .ok_or_else(bad)
    }
}

/// The MongoDB modes' settings (`snapshot`, `snapshot_diff`, `change_stream`).
#[derive(Debug, Clone, PartialEq)]
pub struct MongoConfig {
    /// The collection to read (the database is the one named in the source URL).
    pub collection: String,
    /// Declared column types by top-level field, overriding what the sample
    /// infers, e.g. `{ age = "int64", price = "decimal(38,2)", address = "json" }`.
    pub columns: BTreeMap<String, String>,
    /// Documents read (in natural order) to infer the schema on the table's first
    /// run; later runs reuse the lake's schema. 0 = declared columns only.
    pub infer_sample: usize,
    /// How nested documents and arrays are stored.
    pub nested: NestedMode,
    /// What a value that does not fit its column (or a field not in the schema)
    /// does.
    pub on_mismatch: MismatchPolicy,
    /// `snapshot` only: cursors reading disjoint ranges of `_id` at once.
    pub read_parallelism: usize,
}

/// A `[[table]]` as the file writes it: every mode's settings side by side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    name: String,
    source: String,
    #[serde(default)]
    source_table: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    key: Vec<String>,
    #[serde(default)]
    partition_by: String,
    #[serde(default)]
    mode: CaptureMode,
    #[serde(default)]
    collection: Option<String>,
    #[serde(default)]
    columns: BTreeMap<String, String>,
    #[serde(default)]
    infer_sample: Option<usize>,
    #[serde(default)]
    nested: Option<NestedMode>,
    #[serde(default)]
    on_mismatch: Option<MismatchPolicy>,
    #[serde(default)]
    retention_days: Option<u32>,
    #[serde(default)]
    clickhouse_partition: Option<PartitionGrain>,
    #[serde(default = "default_batch_rows")]
    batch_rows: usize,
    #[serde(default)]
    read_parallelism: Option<usize>,
    #[serde(default)]
    lookback: Option<Lookback>,
    #[serde(default)]
    detect_deletes: bool,
}

fn default_batch_rows() -> usize {
    64 * 1024
}

const DEFAULT_INFER_SAMPLE: usize = 1000;

impl<'de> Deserialize<'de> for TableConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(TableFile::deserialize(deserializer)?.into())
    }
}

impl From<TableFile> for TableConfig {
    fn from(f: TableFile) -> Self {
        let mut stray = Vec::new();
        let watermark_fields = [
            ("source_table", f.source_table.is_some()),
            ("query", f.query.is_some()),
            ("cursor", !f.cursor.is_empty()),
            ("partition_by", !f.partition_by.is_empty()),
            ("lookback", f.lookback.is_some()),
            ("detect_deletes", f.detect_deletes),
        ];
        let mongo_fields = [
            ("collection", f.collection.is_some()),
            ("columns", !f.columns.is_empty()),
            ("infer_sample", f.infer_sample.is_some()),
            ("nested", f.nested.is_some()),
            ("on_mismatch", f.on_mismatch.is_some()),
            ("read_parallelism", f.read_parallelism.is_some()),
        ];
        let other = match f.mode {
            CaptureMode::Watermark => &mongo_fields[..],
            _ => &watermark_fields[..],
        };
        stray.extend(other.iter().filter(|(_, set)| *set).map(|(name, _)| *name));
        let mongo = MongoConfig {
            collection: f.collection.unwrap_or_default(),
            columns: f.columns,
            infer_sample: f.infer_sample.unwrap_or(DEFAULT_INFER_SAMPLE),
            nested: f.nested.unwrap_or_default(),
            on_mismatch: f.on_mismatch.unwrap_or_default(),
            read_parallelism: f.read_parallelism.unwrap_or(1),
        };
        let capture = match f.mode {
            CaptureMode::Watermark => CaptureConfig::Watermark(WatermarkConfig {
                source_table: f.source_table,
                query: f.query,
                cursor: f.cursor,
                partition_by: f.partition_by,
                lookback: f.lookback,
                detect_deletes: f.detect_deletes,
            }),
            CaptureMode::Snapshot => CaptureConfig::Snapshot(mongo),
            CaptureMode::SnapshotDiff => CaptureConfig::SnapshotDiff(mongo),
            CaptureMode::ChangeStream => CaptureConfig::ChangeStream(mongo),
        };
        Self {
            name: f.name,
            source: f.source,
            key: f.key,
            retention_days: f.retention_days,
            clickhouse_partition: f.clickhouse_partition,
            batch_rows: f.batch_rows,
            capture,
            stray,
        }
    }
}

impl CaptureConfig {
    pub fn mode(&self) -> CaptureMode {
        match self {
            CaptureConfig::Watermark(_) => CaptureMode::Watermark,
            CaptureConfig::Snapshot(_) => CaptureMode::Snapshot,
            CaptureConfig::SnapshotDiff(_) => CaptureMode::SnapshotDiff,
            CaptureConfig::ChangeStream(_) => CaptureMode::ChangeStream,
        }
    }
}

impl TableConfig {
    /// The capture mode.
    pub fn mode(&self) -> CaptureMode {
        self.capture.mode()
    }

    /// The watermark settings, for a table in `watermark` mode.
    pub fn watermark(&self) -> Option<&WatermarkConfig> {
        match &self.capture {
            CaptureConfig::Watermark(w) => Some(w),
            _ => None,
        }
    }

    /// The MongoDB settings, for a table in one of the MongoDB modes.
    pub fn mongo(&self) -> Option<&MongoConfig> {
        match &self.capture {
            CaptureConfig::Watermark(_) => None,
            CaptureConfig::Snapshot(m)
            | CaptureConfig::SnapshotDiff(m)
            | CaptureConfig::ChangeStream(m) => Some(m),
        }
    }

    /// The table's ClickHouse partition: as configured, else by month for
    /// snapshots (one snapshot a day) and by day for everything else.
    pub fn clickhouse_grain(&self) -> PartitionGrain {
        self.clickhouse_partition.unwrap_or(match self.mode() {
            CaptureMode::Snapshot => PartitionGrain::Month,
            _ => PartitionGrain::Day,
        })
    }

    /// The key fields: `key`, or `["_id"]` for a MongoDB table without one.
    pub fn key_fields(&self) -> Vec<String> {
        if self.key.is_empty() && self.mode() != CaptureMode::Watermark {
            vec!["_id".to_string()]
        } else {
            self.key.clone()
        }
    }

    /// Rejects what the table's mode cannot do with a source of this kind
    /// (`mongo`: the source is MongoDB), before any I/O.
    pub fn validate(&self, mongo: bool) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| ConfigError::Invalid {
            table: self.name.clone(),
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if let Some(m) = self.mongo() {
            if m.read_parallelism != 1 && self.mode() != CaptureMode::Snapshot {
                return Err(invalid(
                    "read_parallelism",
                    "is for MongoDB tables in mode \"snapshot\" (snapshot_diff reads one cursor in key order)",
                ));
            }
            if !(1..=MAX_READ_PARALLELISM).contains(&m.read_parallelism) {
                return Err(invalid(
                    "read_parallelism",
                    &format!("must be between 1 and {MAX_READ_PARALLELISM}"),
                ));
            }
        }
        if self.batch_rows == 0 {
            return Err(invalid("batch_rows", "must be > 0"));
        }
        match (&self.capture, mongo) {
            (CaptureConfig::Watermark(_), true) => Err(invalid(
                "mode",
                "must be \"snapshot\", \"snapshot_diff\" or \"change_stream\" for a MongoDB source (a collection has no watermark column)",
            )),
            (CaptureConfig::Watermark(w), false) => {
                self.refuse_stray(&invalid)?;
                w.validate(self, &invalid)
            }
            (_, false) => Err(invalid(
                "mode",
                "snapshot, snapshot_diff and change_stream capture read MongoDB sources only (SQL sources use watermark)",
            )),
            (_, true) => {
                self.refuse_stray(&invalid)?;
                let m = self.mongo().expect("a MongoDB mode");
                m.validate(self, &invalid)
            }
        }
    }

    /// Refuses the settings of another mode, saying what this mode uses instead.
    fn refuse_stray(&self, invalid: &dyn Fn(&str, &str) -> ConfigError) -> Result<(), ConfigError> {
        let set = |names: &[&str]| names.iter().any(|n| self.stray.contains(n));
        if self.mode() == CaptureMode::Watermark {
            if let Some(field) = self.stray.first() {
                return Err(invalid(
                    field,
                    if *field == "collection" {
                        "is only for sources of kind \"mongodb\""
                    } else {
                        "is a MongoDB setting; a SQL table reads `source_table` or `query` by watermark"
                    },
                ));
            }
            return Ok(());
        }
        if set(&["source_table", "query"]) {
            return Err(invalid(
                "source_table/query",
                "are for SQL sources; a MongoDB table names its `collection`",
            ));
        }
        if set(&["lookback", "detect_deletes"]) {
            return Err(invalid(
                "lookback/detect_deletes",
                "are watermark settings; snapshot_diff and change_stream see deletes by themselves",
            ));
        }
        if set(&["cursor", "partition_by"]) {
            return Err(invalid(
                "cursor/partition_by",
                "are watermark settings; snapshot tables are partitioned by snapshot_date (or _change_date)",
            ));
        }
        Ok(())
    }
}

impl WatermarkConfig {
    fn validate(
        &self,
        table: &TableConfig,
        invalid: &dyn Fn(&str, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        match (&self.source_table, &self.query) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(invalid("source_table/query", "set exactly one of them")),
        }
        if table.key.is_empty() {
            return Err(invalid(
                "key",
                "at least one key column is needed to replace updated rows",
            ));
        }
        if self.cursor.is_empty() || self.partition_by.is_empty() {
            return Err(invalid("cursor/partition_by", "must name columns"));
        }
        Ok(())
    }
}

impl MongoConfig {
    fn validate(
        &self,
        table: &TableConfig,
        invalid: &dyn Fn(&str, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let mode = table.mode();
        if mode != CaptureMode::Snapshot
            && table.clickhouse_partition == Some(PartitionGrain::Month)
        {
            return Err(invalid(
                "clickhouse_partition",
                "\"month\" is for watermark and snapshot tables; the change and current-state tables of snapshot_diff and change_stream are partitioned by day",
            ));
        }
        if self.collection.is_empty() {
            return Err(invalid("collection", "must name the MongoDB collection"));
        }
        let key = &table.key;
        if key.len() > 1 || key.iter().any(|k| k.is_empty() || k.contains('.')) {
            return Err(invalid(
                "key",
                "must be one top-level field (default [\"_id\"])",
            ));
        }
        // A delete event names its document by `_id` only (documentKey): another
        // key field could not be found for it.
        if mode == CaptureMode::ChangeStream && key.iter().any(|k| k != "_id") {
            return Err(invalid(
                "key",
                "must be [\"_id\"] (the default) in change_stream mode: delete events carry only the document's _id",
            ));
        }
        for (column, ty) in &self.columns {
            if ColumnType::parse(ty).is_none() {
                return Err(invalid(
                    &format!("columns.{column}"),
                    &format!("has unknown type {ty:?} (string, objectid, int32, int64, double, bool, timestamp, decimal(P,S), binary, json)"),
                ));
            }
        }
        if self.infer_sample == 0 && self.columns.is_empty() {
            return Err(invalid(
                "infer_sample",
                "is 0 and no `columns` are declared: the table would have no columns",
            ));
        }
        Ok(())
    }
}
