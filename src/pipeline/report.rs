//! What a table's run did: the counts, positions, timings and warnings that the
//! driver fills in and the run report (`_sluice/runs/<run_id>.json`) keeps.

use serde::Serialize;

/// What one table's run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    pub table: String,
    /// Rows the source returned.
    pub rows_read: u64,
    /// Rows read again and dropped as already loaded: at the old watermark, or in
    /// a backfill, rows already in the lake exactly as read.
    pub rows_skipped: u64,
    /// Rows written to the lake (inserts and updates).
    pub rows_changed: u64,
    /// Old lake rows replaced by a newer version of the same key.
    pub rows_replaced: u64,
    /// Lake rows removed because the source deleted their key (`detect_deletes`).
    pub rows_deleted: u64,
    pub partitions_written: Vec<String>,
    pub files_written: usize,
    pub bytes_written: u64,
    /// Days loaded into ClickHouse, and the rows now in them.
    pub partitions_loaded: Vec<String>,
    pub rows_loaded: u64,
    pub watermark_before: Option<String>,
    pub watermark_after: Option<String>,
    pub lake_rows: u64,
    pub seconds: f64,
    /// Where those seconds went.
    pub stages: StageSeconds,
    pub warnings: Vec<String>,
}

/// Wall-clock seconds of one table's run, per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StageSeconds {
    /// Reading the source and writing new Parquet files (the two overlap).
    pub extract: f64,
    /// Rewriting days that already had files with their changed rows.
    pub merge: f64,
    /// Manifest commits and deleting replaced files.
    pub commit: f64,
    /// ClickHouse: table DDL and partition loads.
    pub warehouse: f64,
}
