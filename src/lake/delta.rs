//! Every lake table is a Delta table: `<table>/_delta_log/` is its commit point.
//!
//! sluice writes its Parquet files itself (file sizing, key sorting, zstd, page
//! index: `writer.rs`) and hands delta-rs the actions that make them visible: one
//! [`CommitBuilder`] commit per lake commit, holding
//!
//! - `add` / `remove` for the files that came and went (with `numRecords`),
//! - `metaData` (and `protocol`) when the table is created or its schema changes,
//! - a `txn` action, app id `sluice`, whose version is the table's commit count
//!   (a commit whose PUT was retried after its answer was lost finds itself by
//!   it, with the same run and commit time, and counts as done, not as a
//!   conflict),
//! - and, in the `commitInfo` of the same JSON file, the table's **position**
//!   under the key `sluice`: watermark and seen rows, the change stream's resume
//!   token, the schema history, the days pending for ClickHouse.
//!
//! **Why the position is atomic with the files.** A Delta commit is the single
//! object `_delta_log/<version>.json`, created with a put-if-absent (`If-None-Match:
//! *` on S3, a no-replace rename on a local folder). The files and the position are
//! in that one object, so a reader sees both or neither, and two writers cannot
//! both create the same version: the loser gets [`Error::CommitConflict`] and
//! changes nothing (delta-rs's retries are off: sluice never rebases a commit onto
//! someone else's). The position is read back from the newest commit that has one.
//!
//! The partition column of a Delta table is the day of the table's
//! `partition_by` column, named `<column>_day` (`created_at_day=2026-03-01/`): a
//! name no file column has, so readers that take partition values from folder
//! names add a date column instead of overwriting a timestamp.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake_core::kernel::{
    new_metadata, Action, Add, Protocol, Remove, StructType, Transaction,
};
use deltalake_core::logstore::{default_logstore, LogStoreRef, StorageConfig};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::table::state::DeltaTableState;
use deltalake_core::{DeltaTable, DeltaTableError};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;

use super::manifest::{ColumnEntry, FileEntry, KeyPrint, Manifest, PartitionEntry};
use crate::error::{Error, Result};

/// The app id of sluice's `txn` actions and the `commitInfo` key of its position.
pub const APP_ID: &str = "sluice";

/// The partition key of a table without a partition column (a model without
/// `partition_by`): all its files.
pub const WHOLE_TABLE: &str = crate::warehouse::ddl::UNPARTITIONED;

/// Commits between two checkpoints of a table's log: opening a table reads the
/// last checkpoint and at most this many JSON commits.
pub const CHECKPOINT_INTERVAL: u64 = 20;

/// The table property that says how long removed files stay (for time travel).
const RETENTION_KEY: &str = "delta.deletedFileRetentionDuration";

fn retention(days: u32) -> String {
    format!("interval {days} days")
}

/// How far back a reader looks for the newest commit that carries sluice's
/// position (commits by other tools, such as a `VACUUM`, carry none).
const POSITION_LOOKBACK: u64 = 100;

/// The Delta partition column of a table partitioned by `column`.
pub fn day_column(column: &str) -> String {
    format!("{column}_day")
}

/// The folder (relative to the table) of `column`'s partition `day`.
pub fn partition_folder(column: &str, day: &str) -> String {
    format!("{}={day}", day_column(column))
}

/// A table's log as this process last read or wrote it: what its next commit
/// follows.
#[derive(Clone)]
pub(super) enum Committed {
    /// No Delta table yet: the next commit creates it (version 0).
    Absent,
    /// A table of the manifest format (before the lake was a Delta Lake): the
    /// next commit creates the Delta table, with every file the manifest lists.
    Legacy,
    Table(Box<Snapshot>),
}

/// One version of a table's log, with what the next commit compares against.
#[derive(Clone)]
pub(super) struct Snapshot {
    pub state: DeltaTableState,
    /// Live files by path (relative to the table), with their partition day.
    pub files: BTreeMap<String, String>,
    pub schema: Vec<ColumnEntry>,
    pub partition_column: String,
}

impl std::fmt::Debug for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Committed::Absent => f.write_str("Absent"),
            Committed::Legacy => f.write_str("Legacy"),
            Committed::Table(s) => write!(f, "Table(version {})", s.state.version()),
        }
    }
}

impl Committed {
    pub fn version(&self) -> Option<u64> {
        match self {
            Committed::Absent | Committed::Legacy => None,
            Committed::Table(s) => Some(s.state.version()),
        }
    }
}

/// The log store of one table: delta-rs over the lake's own object store
/// (`root`: where URL paths resolve, `table`: the table folder in it).
pub(super) fn log_store(root: Arc<dyn ObjectStore>, table: &Path, url: &url::Url) -> LogStoreRef {
    let prefixed: Arc<dyn ObjectStore> =
        Arc::new(PrefixStore::new(Arc::clone(&root), table.clone()));
    default_logstore(prefixed, root, url, &StorageConfig::default())
}

/// Whether the table folder has a Delta log.
pub(super) async fn exists(log: &LogStoreRef, table: &str) -> Result<bool> {
    log.is_delta_table_location()
        .await
        .map_err(|e| delta_error(table, "reading the Delta log", e))
}

/// Which version of a table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Latest,
    /// A Delta version.
    Version(u64),
    /// The latest version committed at or before this instant.
    Time(chrono::DateTime<chrono::Utc>),
}

/// Reads version `at` of `table`'s log: its files and sluice's position.
pub(super) async fn read(
    log: LogStoreRef,
    store: &Arc<dyn ObjectStore>,
    log_dir: &Path,
    table: &str,
    at: At,
) -> Result<(Manifest, Snapshot)> {
    let mut delta = DeltaTable::new(log);
    let loaded = match at {
        At::Latest => delta.load().await,
        At::Version(v) => delta.load_version(v as _).await,
        At::Time(t) => delta.load_with_datetime(t).await,
    };
    loaded.map_err(|e| match at {
        At::Latest => delta_error(table, "reading the Delta log", e),
        At::Version(v) => delta_error(table, &format!("reading version {v}"), e),
        At::Time(t) => delta_error(table, &format!("reading the version as of {t}"), e),
    })?;
    let state = delta
        .snapshot()
        .map_err(|e| delta_error(table, "reading the Delta log", e))?
        .clone();
    let version = state.version();
    if let At::Time(t) = at {
        // delta-rs reads the first version for an instant before it: there is
        // no table then.
        let committed = state.version_timestamp(state.version());
        if let Some(ms) = committed.filter(|ms| *ms > t.timestamp_millis()) {
            let first = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
            return Err(Error::lake(format!(
                "table {table}: no version was committed by {t}: the first was at {first}"
            )));
        }
    }
    let mut manifest = read_position(store, log_dir, table, version).await?;
    if manifest.table != table {
        return Err(Error::lake(format!(
            "{log_dir} is the Delta log of sluice table {:?}, not {table:?}: two tables share a folder",
            manifest.table
        )));
    }
    let partition_columns = state.metadata().partition_columns().to_vec();
    let expected: Vec<String> = match manifest.partition_column.as_str() {
        "" => Vec::new(),
        column => vec![day_column(column)],
    };
    if partition_columns != expected {
        return Err(Error::lake(format!(
            "table {table}: the Delta table is partitioned by {partition_columns:?}, sluice expects {expected:?}; \
             it was changed by another tool (nothing was written)"
        )));
    }
    let mut files = BTreeMap::new();
    let mut partitions: BTreeMap<String, PartitionEntry> = BTreeMap::new();
    {
        use futures::TryStreamExt;
        let mut views = delta.get_active_add_actions_by_partitions(&[]);
        while let Some(view) = views
            .try_next()
            .await
            .map_err(|e| delta_error(table, "listing the table's files", e))?
        {
            let path = view.path().to_string();
            let day = match expected.first() {
                None => WHOLE_TABLE.to_string(),
                Some(column) => view
                    .partition_values_map()
                    .get(column)
                    .cloned()
                    .flatten()
                    .ok_or_else(|| {
                        Error::lake(format!(
                            "table {table}: file {path} has no value for the partition column {column}"
                        ))
                    })?,
            };
            if view.deletion_vector_descriptor().is_some() {
                return Err(Error::lake(format!(
                    "table {table}: file {path} has a deletion vector, which another tool wrote; \
                     sluice does not read deletion vectors yet (run OPTIMIZE/PURGE to rewrite it)"
                )));
            }
            let rows = view.num_records().ok_or_else(|| {
                Error::lake(format!(
                    "table {table}: file {path} has no row count (numRecords) in the Delta log"
                ))
            })? as u64;
            let entry = partitions.entry(day.clone()).or_default();
            entry.rows += rows;
            entry.files.push(FileEntry {
                path: path.clone(),
                rows,
                bytes: view.size() as u64,
            });
            files.insert(path, day);
        }
    }
    for (day, entry) in partitions.iter_mut() {
        entry.files.sort_by(|a, b| a.path.cmp(&b.path));
        entry.key_print = manifest
            .partitions
            .get(day)
            .and_then(|p| p.key_print)
            .filter(|k| k.rows == entry.rows);
    }
    // A day whose rows were all deleted keeps its (empty) fingerprint: the
    // next run need not look at it again.
    for (day, entry) in &manifest.partitions {
        if entry.key_print.is_some_and(|k| k.rows == 0) {
            partitions
                .entry(day.clone())
                .or_insert_with(|| entry.clone());
        }
    }
    manifest.partitions = partitions;
    let snapshot = Snapshot {
        state,
        files,
        schema: manifest.schema.clone(),
        partition_column: manifest.partition_column.clone(),
    };
    Ok((manifest, snapshot))
}

/// The position sluice committed with the newest version at or below `version`
/// that has one.
async fn read_position(
    store: &Arc<dyn ObjectStore>,
    log_dir: &Path,
    table: &str,
    version: u64,
) -> Result<Manifest> {
    let oldest = version.saturating_sub(POSITION_LOOKBACK);
    for v in (oldest..=version).rev() {
        let path = log_dir.clone().join(format!("{v:020}.json"));
        let bytes = match store.get(&path).await {
            Ok(found) => found
                .bytes()
                .await
                .map_err(|e| Error::store(format!("reading {path}"), e))?,
            Err(object_store::Error::NotFound { .. }) => break,
            Err(e) => return Err(Error::store(format!("reading {path}"), e)),
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: Value = serde_json::from_slice(line)
                .map_err(|e| Error::lake(format!("{path} is not a Delta commit: {e}")))?;
            if let Some(position) = action.get("commitInfo").and_then(|c| c.get(APP_ID)) {
                return from_position(position.clone())
                    .map_err(|e| Error::lake(format!("{path}: sluice's position: {e}")));
            }
        }
    }
    Err(Error::lake(format!(
        "table {table}: {log_dir} is a Delta table that sluice did not write (no commit from version {oldest} to {version} \
         holds sluice's position); point the table at another folder or remove this one"
    )))
}

/// The files that versions of the table removed and that are still kept for
/// reading older versions: path → when removed (milliseconds since the epoch).
pub(super) async fn removed(
    log: &LogStoreRef,
    snapshot: &Snapshot,
    table: &str,
) -> Result<BTreeMap<String, i64>> {
    use futures::TryStreamExt;
    let mut removed = BTreeMap::new();
    let mut tombstones = snapshot.state.all_tombstones(log.as_ref());
    while let Some(t) = tombstones
        .try_next()
        .await
        .map_err(|e| delta_error(table, "listing removed files", e))?
    {
        removed.insert(t.path().to_string(), t.deletion_timestamp().unwrap_or(0));
    }
    Ok(removed)
}

/// What sluice keeps in a commit's `commitInfo`: the manifest without its file
/// list (that is the Delta log's), plus each day's key fingerprint.
pub(super) fn to_position(manifest: &Manifest) -> Result<Value> {
    let mut value = serde_json::to_value(manifest)
        .map_err(|e| Error::lake(format!("encoding the position of {}: {e}", manifest.table)))?;
    let key_prints: BTreeMap<&String, KeyPrint> = manifest
        .partitions
        .iter()
        .filter_map(|(day, p)| p.key_print.map(|k| (day, k)))
        .collect();
    if let Some(object) = value.as_object_mut() {
        object.remove("partitions");
        object.insert(
            "format_version".into(),
            super::manifest::FORMAT_VERSION.into(),
        );
        object.insert(
            "key_prints".into(),
            serde_json::to_value(key_prints).unwrap_or_default(),
        );
    }
    Ok(value)
}

fn from_position(mut value: Value) -> std::result::Result<Manifest, serde_json::Error> {
    let key_prints: BTreeMap<String, KeyPrint> = value
        .as_object_mut()
        .and_then(|o| o.remove("key_prints"))
        .map(serde_json::from_value)
        .transpose()?
        .unwrap_or_default();
    let mut manifest: Manifest = serde_json::from_value(value)?;
    manifest.partitions = key_prints
        .into_iter()
        .map(|(day, k)| {
            let entry = PartitionEntry {
                rows: k.rows,
                files: Vec::new(),
                key_print: Some(k),
            };
            (day, entry)
        })
        .collect();
    Ok(manifest)
}

/// Commits `manifest` as the next version after `committed`: the files it adds
/// and drops, its schema when new, its position. Returns the new snapshot.
pub(super) async fn commit(
    log: LogStoreRef,
    url: &url::Url,
    (store, log_dir): (&Arc<dyn ObjectStore>, &Path),
    committed: &Committed,
    manifest: &Manifest,
    keep_versions_days: u32,
) -> Result<Snapshot> {
    let table = manifest.table.as_str();
    let day_column =
        (!manifest.partition_column.is_empty()).then(|| day_column(&manifest.partition_column));
    let partition_values = |day: &str| -> HashMap<String, Option<String>> {
        day_column
            .iter()
            .map(|c| (c.clone(), Some(day.to_string())))
            .collect()
    };
    let now = chrono::Utc::now().timestamp_millis();
    let live: BTreeMap<&str, (&str, &FileEntry)> = manifest
        .partitions
        .iter()
        .flat_map(|(day, p)| {
            p.files
                .iter()
                .map(move |f| (f.path.as_str(), (day.as_str(), f)))
        })
        .collect();

    let mut actions = Vec::new();
    let (previous, schema_changed) = match committed {
        Committed::Absent | Committed::Legacy => (None, true),
        Committed::Table(s) => {
            if s.partition_column != manifest.partition_column {
                return Err(Error::lake(format!(
                    "table {table}: the commit changes the partition column from {:?} to {:?} (a bug in sluice); nothing was written",
                    s.partition_column, manifest.partition_column
                )));
            }
            // The retention is the table's configuration too, so that other
            // Delta writers (a VACUUM) keep the same history.
            let retention_changed = s.state.metadata().configuration().get(RETENTION_KEY)
                != Some(&retention(keep_versions_days));
            (
                Some(s.as_ref()),
                s.schema != manifest.schema || retention_changed,
            )
        }
    };
    let mut created = None;
    if schema_changed {
        let (schema, left_out) = delta_schema(table, &manifest.schema, day_column.as_deref())?;
        if !left_out.is_empty() {
            tracing::warn!(
                table,
                columns = %left_out.join(", "),
                "Columns left out of the Delta schema: Delta holds decimals of at most 38 digits. \
                 Delta readers do not see them; sluice query and ClickHouse do."
            );
        }
        let metadata = match previous {
            None => {
                let configuration = [
                    (
                        "delta.checkpointInterval".to_string(),
                        CHECKPOINT_INTERVAL.to_string(),
                    ),
                    (RETENTION_KEY.to_string(), retention(keep_versions_days)),
                ];
                new_metadata(&schema, day_column.iter(), configuration)
            }
            Some(s) => {
                use deltalake_core::kernel::MetadataExt;
                s.state
                    .metadata()
                    .clone()
                    .with_schema(&schema)
                    .and_then(|m| {
                        m.add_config_key(RETENTION_KEY.into(), retention(keep_versions_days))
                    })
            }
        }
        .map_err(|e| Error::lake(format!("table {table}: building the Delta metadata: {e}")))?;
        let protocol = protocol_for(&schema)?;
        // A protocol never goes down: readers of the old one stay refused.
        let protocol_changed = previous.is_none_or(|s| {
            let old = s.state.protocol();
            old.min_reader_version() < protocol.min_reader_version()
                || old.min_writer_version() < protocol.min_writer_version()
        });
        if protocol_changed {
            actions.push(Action::Protocol(protocol.clone()));
        }
        actions.push(Action::Metadata(metadata.clone()));
        created = Some((protocol, metadata));
    }
    let empty = BTreeMap::new();
    let before = previous.map(|s| &s.files).unwrap_or(&empty);
    for (path, (day, file)) in &live {
        if !before.contains_key(*path) {
            actions.push(Action::Add(Add {
                path: path.to_string(),
                partition_values: partition_values(day),
                size: file.bytes as i64,
                modification_time: now,
                data_change: true,
                stats: Some(format!("{{\"numRecords\":{}}}", file.rows)),
                ..Default::default()
            }));
        }
    }
    for (path, day) in before {
        if !live.contains_key(path.as_str()) {
            actions.push(Action::Remove(Remove {
                path: path.clone(),
                data_change: true,
                deletion_timestamp: Some(now),
                extended_file_metadata: Some(true),
                partition_values: Some(partition_values(day)),
                ..Default::default()
            }));
        }
    }

    let properties = CommitProperties::default()
        .with_max_retries(0)
        .with_metadata([(APP_ID.to_string(), to_position(manifest)?)])
        .with_application_transaction(Transaction::new(APP_ID, manifest.version as i64));
    let operation = match (&created, previous) {
        (Some((protocol, metadata)), None) => DeltaOperation::Create {
            mode: SaveMode::ErrorIfExists,
            location: url.clone(),
            protocol: protocol.clone(),
            metadata: metadata.clone(),
        },
        _ => DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: day_column.clone().map(|c| vec![c]),
            predicate: None,
        },
    };
    let reference =
        previous.map(|s| &s.state as &dyn deltalake_core::kernel::transaction::TableReference);
    let result = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(reference, Arc::clone(&log), operation)
        .await;
    let finalized = match result {
        Ok(f) => f,
        Err(e) if conflict(&e) => {
            // One read of the log serves both questions: did this very commit
            // land (a PUT retried after its answer was lost finds itself by the
            // same `txn` version and position), and what is the table now.
            let latest = read(Arc::clone(&log), store, log_dir, table, At::Latest).await;
            let now = match &latest {
                Ok((now, snapshot)) => {
                    let txn = snapshot
                        .state
                        .transaction_version(log.as_ref(), APP_ID)
                        .await
                        .ok()
                        .flatten();
                    if txn == Some(manifest.version as i64)
                        && now.run_id == manifest.run_id
                        && now.committed_at == manifest.committed_at
                    {
                        return latest.map(|(_, snapshot)| snapshot);
                    }
                    format!("it is now version {} of run {}", now.version, now.run_id)
                }
                Err(_) => "another writer committed first".into(),
            };
            let read = match committed.version() {
                Some(v) => format!("Delta version {v}"),
                None => "no Delta table yet".into(),
            };
            return Err(Error::CommitConflict {
                table: table.to_string(),
                detail: format!("this run read {read}; {now}"),
            });
        }
        Err(e) => return Err(delta_error(table, "committing", e)),
    };
    Ok(Snapshot {
        state: finalized.snapshot(),
        files: live
            .iter()
            .map(|(path, (day, _))| (path.to_string(), day.to_string()))
            .collect(),
        schema: manifest.schema.clone(),
        partition_column: manifest.partition_column.clone(),
    })
}

/// Whether a failed commit lost the race for its version.
fn conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::VersionAlreadyExists(_)
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::CommitConflict(_)
        } | DeltaTableError::VersionAlreadyExists(_)
    )
}

/// The Delta schema of a table: its file columns, then the partition day, and
/// the columns left out of it.
///
/// A column whose type Delta cannot hold (a decimal of more than 38 digits)
/// stays in the files, where `sluice query` and ClickHouse read it, but not in
/// the Delta schema: Delta readers see the table without it.
fn delta_schema(
    table: &str,
    columns: &[ColumnEntry],
    day_column: Option<&str>,
) -> Result<(StructType, Vec<String>)> {
    let mut fields = Vec::with_capacity(columns.len() + 1);
    let mut left_out = Vec::new();
    for column in columns {
        let data_type = DataType::from_str(&column.arrow_type).map_err(|e| {
            Error::lake(format!(
                "table {table}: column {} has type {:?}, which Arrow cannot parse: {e}",
                column.name, column.arrow_type
            ))
        })?;
        let field = Field::new(&column.name, delta_arrow_type(&data_type), column.nullable);
        let alone = Schema::new(vec![field.clone()]);
        let fits: std::result::Result<StructType, _> = (&alone).try_into_kernel();
        match fits {
            Ok(_) => fields.push(field),
            Err(_) => left_out.push(format!("{} ({})", column.name, column.arrow_type)),
        }
    }
    if let Some(day) = day_column {
        if columns.iter().any(|c| c.name == day) {
            return Err(Error::lake(format!(
                "table {table}: the files have a column {day}, the name sluice gives the partition day; rename it"
            )));
        }
        fields.push(Field::new(day, DataType::Date32, true));
    }
    let schema = Schema::new(fields);
    let schema = (&schema).try_into_kernel().map_err(|e| {
        let e = e.to_string();
        Error::lake(format!(
            "table {table}: its schema has no Delta Lake equivalent: {}",
            e.lines().next().unwrap_or_default()
        ))
    })?;
    Ok((schema, left_out))
}

/// The type Delta readers see for a file column of `data_type`: instants are
/// written with the zone `+00:00`, which Delta spells `UTC`.
fn delta_arrow_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Timestamp(unit, Some(zone)) if zone.as_ref() == "+00:00" => {
            DataType::Timestamp(*unit, Some("UTC".into()))
        }
        DataType::Timestamp(TimeUnit::Second, zone) => {
            DataType::Timestamp(TimeUnit::Microsecond, zone.clone())
        }
        DataType::List(field) => DataType::List(Arc::new(
            field
                .as_ref()
                .clone()
                .with_data_type(delta_arrow_type(field.data_type())),
        )),
        DataType::LargeList(field) => DataType::LargeList(Arc::new(
            field
                .as_ref()
                .clone()
                .with_data_type(delta_arrow_type(field.data_type())),
        )),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| {
                    Arc::new(
                        f.as_ref()
                            .clone()
                            .with_data_type(delta_arrow_type(f.data_type())),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The oldest protocol that reads `schema`: (1, 2), or table features when a
/// column is a timestamp without zone.
fn protocol_for(schema: &StructType) -> Result<Protocol> {
    let ntz = deltalake_core::kernel::contains_timestampntz(schema.fields());
    let json = if ntz {
        serde_json::json!({
            "minReaderVersion": 3,
            "minWriterVersion": 7,
            "readerFeatures": ["timestampNtz"],
            "writerFeatures": ["timestampNtz"],
        })
    } else {
        serde_json::json!({"minReaderVersion": 1, "minWriterVersion": 2})
    };
    serde_json::from_value(json).map_err(|e| Error::lake(format!("building a Delta protocol: {e}")))
}

fn delta_error(table: &str, doing: &str, e: DeltaTableError) -> Error {
    Error::lake(format!("table {table}: {doing}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::manifest::columns_of;

    fn column(name: &str, data_type: DataType) -> ColumnEntry {
        columns_of(&Schema::new(vec![Field::new(name, data_type, true)]))
            .pop()
            .unwrap()
    }

    #[test]
    fn the_position_round_trips_without_the_file_list() {
        let mut m = Manifest::new("t", "created_at", &["id".to_string()]);
        m.version = 7;
        m.run_id = "r".into();
        m.pending_warehouse.insert("2026-11-24".into());
        m.partitions.insert(
            "2026-11-24".into(),
            PartitionEntry {
                rows: 2,
                files: vec![FileEntry {
                    path: "created_at_day=2026-11-24/part-r-0.parquet".into(),
                    rows: 2,
                    bytes: 10,
                }],
                key_print: Some(KeyPrint { rows: 2, sum: 99 }),
            },
        );
        let position = to_position(&m).unwrap();
        assert!(position.get("partitions").is_none(), "{position}");
        assert_eq!(position["format_version"], 2);
        let back = from_position(position).unwrap();
        assert_eq!(back.version, 7);
        assert_eq!(back.pending_warehouse, m.pending_warehouse);
        let day = &back.partitions["2026-11-24"];
        assert!(day.files.is_empty(), "files come from the Delta log");
        assert_eq!(day.key_print, Some(KeyPrint { rows: 2, sum: 99 }));
    }

    #[test]
    fn the_schema_adds_the_day_and_spells_utc_as_delta_does() {
        let columns = vec![
            column("id", DataType::Int64),
            column(
                "created_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            ),
        ];
        let (schema, _) = delta_schema("t", &columns, Some("created_at_day")).unwrap();
        let json = serde_json::to_value(&schema).unwrap();
        let types: Vec<(String, String)> = json["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap().into(), f["type"].to_string()))
            .collect();
        assert_eq!(
            types,
            [
                ("id".into(), "\"long\"".into()),
                ("created_at".into(), "\"timestamp\"".into()),
                ("created_at_day".into(), "\"date\"".into()),
            ]
        );
        let protocol = protocol_for(&schema).unwrap();
        assert_eq!(protocol.min_reader_version(), 1);
    }

    #[test]
    fn a_naive_timestamp_needs_the_timestamp_ntz_feature() {
        let columns = vec![column(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
        )];
        let (schema, _) = delta_schema("t", &columns, None).unwrap();
        let protocol = protocol_for(&schema).unwrap();
        assert_eq!(protocol.min_reader_version(), 3);
        assert_eq!(protocol.min_writer_version(), 7);
    }

    #[test]
    fn what_delta_cannot_hold_is_left_out_or_a_clear_error() {
        let wide = vec![
            column("id", DataType::Int64),
            column("amount", DataType::Decimal256(50, 10)),
        ];
        let (schema, left_out) = delta_schema("t", &wide, None).unwrap();
        assert_eq!(schema.fields().count(), 1);
        assert_eq!(left_out, ["amount (Decimal256(50, 10))"]);

        let clash = vec![column("created_at_day", DataType::Date32)];
        let err = delta_schema("t", &clash, Some("created_at_day"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("created_at_day"), "{err}");
    }
}
