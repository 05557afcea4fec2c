//! The state of one lake table as sluice works with it: which files are live,
//! their row counts, the schema and the capture position.
//!
//! It is kept in the table's Delta log (`delta.rs`): the files as `add`/`remove`
//! actions, the rest in the `commitInfo` of the same commit. Before the lake was
//! a Delta Lake it was the JSON file `<table>/_manifest.json` itself (format 1).

use std::collections::{BTreeMap, BTreeSet};

use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};

use crate::capture::position::StreamPosition;
use crate::capture::position::{CursorValue, SeenRow};

/// Version of this state's layout: 2 since it lives in a Delta log.
pub const FORMAT_VERSION: u32 = 2;

/// The state of one lake table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub table: String,
    /// Column whose day names the partition folders (`<col>=YYYY-MM-DD`).
    pub partition_column: String,
    pub key: Vec<String>,
    /// Increments with every commit.
    pub version: u64,
    /// The run that made this version.
    pub run_id: String,
    /// When this version was committed (RFC 3339, UTC).
    pub committed_at: String,
    /// Column names and Arrow types of the files written from now on. Older files
    /// may lack columns added since (read as NULL) or hold narrower types (cast up).
    pub schema: Vec<ColumnEntry>,
    /// Increments with every schema change (1 for the first schema).
    #[serde(default)]
    pub schema_version: u32,
    /// Every schema the table has had, oldest first.
    #[serde(default)]
    pub schema_history: Vec<SchemaVersion>,
    /// Live files by partition day (`YYYY-MM-DD`).
    #[serde(default)]
    pub partitions: BTreeMap<String, PartitionEntry>,
    /// Capture position: the largest cursor value loaded into the warehouse (or into
    /// the lake when there is no warehouse).
    pub watermark: Option<CursorValue>,
    /// Keys of the rows loaded at exactly `watermark`, as manifests written
    /// before `seen_rows` kept them; read, never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boundary_keys: Vec<Vec<String>>,
    /// The rows loaded at or above `watermark` (and within `lookback` below
    /// it), by key and content hash: the next run reads them again and drops
    /// those unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen_rows: Vec<SeenRow>,
    /// Partition days committed to the lake but not yet loaded into the warehouse.
    #[serde(default)]
    pub pending_warehouse: BTreeSet<String>,
    /// The lake table was rebuilt: the warehouse table must be dropped and reloaded.
    #[serde(default)]
    pub warehouse_rebuild: bool,
    /// `change_stream` tables: where the next run resumes the MongoDB change
    /// stream. Committed in the same PUT as the change rows it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_stream: Option<StreamPosition>,
}

/// One schema of a table's history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchemaVersion {
    pub schema_version: u32,
    /// The manifest version whose commit introduced this schema.
    pub since_manifest_version: u64,
    pub columns: Vec<ColumnEntry>,
}

/// One column of the table's schema.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnEntry {
    pub name: String,
    /// The Arrow type, as Arrow displays it (`Int64`, `Timestamp(µs, "+00:00")`).
    pub arrow_type: String,
    pub nullable: bool,
}

/// The live files of one partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PartitionEntry {
    pub rows: u64,
    pub files: Vec<FileEntry>,
    /// The fingerprint of the day's keys (`detect_deletes`), for these files:
    /// computed once, dropped whenever the files change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_print: Option<KeyPrint>,
}

/// A day's keys as `detect_deletes` compares them with the source: the row
/// count and the sum of a 32-bit hash of each key (see `capture::deletes`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyPrint {
    pub rows: u64,
    /// Below 2^64 while a day holds fewer than 2^32 rows.
    pub sum: u64,
}

/// One live Parquet file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Path relative to the table folder, e.g. `created_at=2026-11-25/part-….parquet`.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

impl Manifest {
    /// An empty manifest for a table seen for the first time.
    pub fn new(table: &str, partition_column: &str, key: &[String]) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            table: table.to_string(),
            partition_column: partition_column.to_string(),
            key: key.to_vec(),
            version: 0,
            run_id: String::new(),
            committed_at: String::new(),
            schema: Vec::new(),
            schema_version: 0,
            schema_history: Vec::new(),
            partitions: BTreeMap::new(),
            watermark: None,
            boundary_keys: Vec::new(),
            seen_rows: Vec::new(),
            pending_warehouse: BTreeSet::new(),
            warehouse_rebuild: false,
            change_stream: None,
        }
    }

    /// Every live file path, relative to the table folder.
    pub fn live_files(&self) -> BTreeSet<&str> {
        self.partitions
            .values()
            .flat_map(|p| p.files.iter().map(|f| f.path.as_str()))
            .collect()
    }

    /// Total rows in the table.
    pub fn rows(&self) -> u64 {
        self.partitions.values().map(|p| p.rows).sum()
    }

    /// Sets the schema without starting a new schema version (tables that are
    /// rewritten whole, such as SQL models).
    pub fn set_schema(&mut self, schema: &Schema) {
        self.schema = columns_of(schema);
    }

    /// Records `schema` as the table's new schema, effective with the next commit.
    pub fn record_schema(&mut self, schema: &Schema) {
        self.schema = columns_of(schema);
        self.schema_version += 1;
        self.schema_history.push(SchemaVersion {
            schema_version: self.schema_version,
            since_manifest_version: self.version + 1,
            columns: self.schema.clone(),
        });
    }
}

/// The manifest form of an Arrow schema.
pub fn columns_of(schema: &Schema) -> Vec<ColumnEntry> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnEntry {
            name: f.name().clone(),
            arrow_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect()
}
