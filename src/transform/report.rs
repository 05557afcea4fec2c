//! What a model's run did, for the run report.

use serde::Serialize;

use crate::error::CheckOutcome;

/// What became of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelStatus {
    /// Committed to the lake (and loaded into ClickHouse when configured).
    Published,
    /// Its SQL or a check failed: nothing was published.
    Failed,
    /// A model it reads failed or was skipped.
    Skipped,
}

/// What one model's run did.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub model: String,
    pub status: ModelStatus,
    /// Rows written to the lake.
    pub rows: u64,
    /// Rows dropped by `drop_unmatched` (validate-before-write).
    pub rows_dropped: u64,
    pub partitions: usize,
    pub files: usize,
    pub bytes: u64,
    /// Rows loaded into ClickHouse.
    pub rows_loaded: u64,
    pub checks: Vec<CheckOutcome>,
    pub error: Option<String>,
    pub seconds: f64,
    /// Where those seconds went.
    pub stages: ModelStageSeconds,
}

/// Wall-clock seconds of one model's run, per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ModelStageSeconds {
    /// Planning, computing the rows and writing their files (with
    /// `drop_unmatched` and the row checks, in the same pass).
    pub build: f64,
    /// The checks run on the written rows (`unique`), and the samples of failed
    /// checks.
    pub checks: f64,
    /// The manifest commit and deleting the replaced files.
    pub commit: f64,
    /// ClickHouse: table DDL and partition loads.
    pub warehouse: f64,
}

impl ModelReport {
    pub(super) fn new(model: &str, status: ModelStatus) -> Self {
        Self {
            model: model.to_string(),
            status,
            rows: 0,
            rows_dropped: 0,
            partitions: 0,
            files: 0,
            bytes: 0,
            rows_loaded: 0,
            checks: Vec::new(),
            error: None,
            seconds: 0.0,
            stages: ModelStageSeconds::default(),
        }
    }
}
