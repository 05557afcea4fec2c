//! Change capture: which source rows a run reads, and how the lake's partitions
//! absorb them.
//!
//! Every mode (watermark and its backfill, snapshot, snapshot diff, change
//! stream) implements [`Capture`]: given the table's committed state (its lake
//! manifests, read by the driver under the table lock), it writes new Parquet
//! files under fresh names and returns a [`CaptureOutcome`]: what to apply to
//! each lake table ([`Apply`]: append, replace days, replace the table), the new
//! position ([`Position`]: a watermark with the rows read again, a change-stream
//! resume token), counts and warnings. A capture never commits, never touches
//! ClickHouse and never writes the run report: `pipeline::driver` does, once for
//! every mode.

pub mod backfill;
pub mod change_stream;
pub mod changes;
pub mod cursor;
pub mod deletes;
pub mod merge;
pub mod merge_join;
pub mod position;
mod resume;
pub mod snapshot;
pub mod watermark;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use arrow::datatypes::SchemaRef;

use crate::config::Config;
use crate::error::Result;
use crate::lake::manifest::{FileEntry, KeyPrint, Manifest};
use crate::lake::Lake;
use crate::progress::TableProgress;
use crate::warehouse::WarehouseTables;

/// One lake table a capture mode writes: its name and how it is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeTable {
    pub name: String,
    /// The column whose day names the partition folders.
    pub partition_column: String,
    pub key: Vec<String>,
}

/// What a capture mode needs besides the committed state.
pub struct CaptureContext<'a> {
    pub config: &'a Config,
    pub lake: &'a Lake,
    pub run_id: &'a str,
    pub progress: &'a TableProgress,
}

/// The committed state of a mode's lake tables, in [`Capture::lake_tables`] order
/// (a fresh empty manifest for a table never committed).
pub struct Committed {
    pub manifests: Vec<Manifest>,
}

/// How a lake table absorbs the files a capture wrote, by day (`YYYY-MM-DD`).
#[derive(Debug, Clone)]
pub enum Apply {
    /// The files are added to their days (change rows are only ever added).
    Append(BTreeMap<String, Vec<FileEntry>>),
    /// Each day's files replace that day's files (a day's snapshot, days merged
    /// with changed rows by key); `drop_days` leave the table (retention, or
    /// snapshots no longer needed).
    ReplaceDays {
        days: BTreeMap<String, Vec<FileEntry>>,
        drop_days: BTreeSet<String>,
    },
    /// The files are the whole table (a rebuild): every old file goes, and
    /// ClickHouse drops the table and loads it again.
    ReplaceTable(BTreeMap<String, Vec<FileEntry>>),
}

impl Apply {
    /// The new files.
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        let days = match self {
            Apply::Append(days) | Apply::ReplaceTable(days) => days,
            Apply::ReplaceDays { days, .. } => days,
        };
        days.values().flatten()
    }
}

/// How a table's schema moves with this commit.
#[derive(Debug, Clone)]
pub enum SchemaUpdate {
    /// A new schema version (recorded in the schema history).
    Record(SchemaRef),
    /// The files' schema, without a new version (tables rewritten as a whole).
    Set(SchemaRef),
    Keep,
}

/// What to do to one lake table.
#[derive(Debug, Clone)]
pub struct TableChange {
    pub apply: Apply,
    pub schema: SchemaUpdate,
    /// The days ClickHouse must (re)load; usually every day that got files.
    pub load: bool,
    /// Fingerprints of days' keys as they are after this change (`detect_deletes`
    /// caches them in the manifest).
    pub key_prints: BTreeMap<String, KeyPrint>,
}

/// Where the capture stands in its source, kept in the table's manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// Unchanged (snapshots have none; a backfill keeps the watermark).
    Keep,
    /// A watermark and the rows the next run reads again (by key and content).
    /// It moves only
    /// once ClickHouse has the rows (or with the lake commit when there is no
    /// ClickHouse): a crash in between re-reads from the old watermark.
    Watermark {
        watermark: Option<crate::capture::position::CursorValue>,
        seen: Vec<crate::capture::position::SeenRow>,
    },
    /// A change stream's resume position, committed with the rows it follows.
    Stream(crate::capture::position::StreamPosition),
}

/// Counts of a capture, for the run report.
#[derive(Debug, Clone, Default)]
pub struct CaptureCounts {
    pub rows_read: u64,
    pub rows_skipped: u64,
    pub rows_changed: u64,
    pub rows_replaced: u64,
    /// Rows removed because the source deleted them (`detect_deletes`).
    pub rows_deleted: u64,
    /// Seconds reading the source and writing files, and merging into old days.
    pub extract_seconds: f64,
    pub merge_seconds: f64,
}

/// What a capture did, for the driver to commit and load.
#[derive(Debug, Clone)]
pub struct CaptureOutcome {
    /// One change per lake table, in [`Capture::lake_tables`] order; committed in
    /// that order (a snapshot diff commits its state before its changes).
    pub changes: Vec<TableChange>,
    /// The schema of the files of the table ClickHouse loads.
    pub schema: SchemaRef,
    /// The day `retention_days` counts back from (days since 1970-01-01): today,
    /// or the snapshot's day.
    pub today: i32,
    pub position: Position,
    /// The warehouse, if there is one, must drop and reload the main table (and
    /// its twin).
    pub rebuild_warehouse: bool,
    pub counts: CaptureCounts,
    /// The position before and after, as the report shows them.
    pub position_before: Option<String>,
    pub position_after: Option<String>,
    pub warnings: Vec<String>,
}

/// A capture mode.
pub trait Capture: Send + Sync {
    /// The lake tables this mode writes; the last one is what ClickHouse loads.
    fn lake_tables(&self) -> Vec<LakeTable>;

    /// The ClickHouse tables made from the last lake table.
    fn warehouse_tables(&self) -> WarehouseTables;

    /// Reads the source from the committed state on, writes the new files, and
    /// says what to apply.
    fn capture(
        &self,
        ctx: &CaptureContext<'_>,
        committed: &Committed,
    ) -> impl Future<Output = Result<CaptureOutcome>> + Send;
}
