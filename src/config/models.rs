//! The `[models]` section of the pipeline file: where the SQL models are, and how
//! each one is partitioned, loaded and checked.
//!
//! ```toml
//! [models]
//! path = "../sql/ewallet"            # folder of *.sql files, relative to this file
//!
//! [models.model.fact_sales]
//! partition_by = "transaction_date"  # or a `-- sluice: partition_by = …` header
//! clickhouse_partition = "month"     # ClickHouse partitions by month (default: day)
//! key = ["transaction_id"]
//! checks.not_null = ["transaction_id", "user_key"]
//! checks.unique = ["transaction_id"]
//! checks.accepted_values = { amount_category = ["Low", "Medium", "High"] }
//! checks.relationships = [{ column = "user_key", to = "dim_users", field = "user_key" }]
//! checks.row_count = { min = 1 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{Config, PartitionGrain};
use crate::error::{ConfigError, ModelError};

/// Where the models are and how to publish them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// Folder holding the models, one `SELECT` per `<model name>.sql` file
    /// (relative paths are relative to the config file).
    pub path: String,
    /// Load the models into ClickHouse as well as the lake. Default: when the config
    /// has a `[clickhouse]` section. A model can override it.
    #[serde(default)]
    pub clickhouse: Option<bool>,
    /// Settings per model, by model name (the file name without `.sql`).
    #[serde(default, rename = "model")]
    pub models: BTreeMap<String, ModelConfig>,
}

/// Settings of one model. Each may also come from a `-- sluice: name = value`
/// comment at the top of the model's file; the config wins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Date or timestamp column whose day names the lake partitions and the
    /// ClickHouse partitions. Unpartitioned when absent: the model is one
    /// partition, replaced whole.
    #[serde(default)]
    pub partition_by: Option<String>,
    /// Columns of the ClickHouse `ORDER BY` (and the natural key of the model).
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Load this model into ClickHouse (default: `[models] clickhouse`).
    #[serde(default)]
    pub clickhouse: Option<bool>,
    /// ClickHouse partition of a partitioned model: `day` (the default,
    /// `toYYYYMMDD`) or `month` (`toYYYYMM`: a year is 12 partitions to swap in
    /// instead of 365). The lake stays partitioned by day.
    #[serde(default)]
    pub clickhouse_partition: Option<PartitionGrain>,
    /// Validate-before-write: rows whose `column` has no match in another table or
    /// model are dropped before the model is written, and counted in the report.
    #[serde(default)]
    pub drop_unmatched: Vec<Relationship>,
    /// Data checks: any failure stops this model's publication and every model
    /// downstream of it.
    #[serde(default)]
    pub checks: ChecksConfig,
}

/// The data checks of one model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConfig {
    /// Columns that must never be NULL.
    #[serde(default)]
    pub not_null: Vec<String>,
    /// Columns (or comma-separated column lists, `"user_id, day"`) whose values
    /// must not repeat.
    #[serde(default)]
    pub unique: Vec<String>,
    /// Allowed values per column (compared as text; NULL passes, use `not_null`).
    #[serde(default)]
    pub accepted_values: BTreeMap<String, Vec<String>>,
    /// Foreign keys: every non-NULL value of `column` exists in `to.field`.
    #[serde(default)]
    pub relationships: Vec<Relationship>,
    /// Bounds on the model's row count.
    #[serde(default)]
    pub row_count: Option<RowCount>,
}

/// `column` of this model refers to `field` of the table or model `to`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relationship {
    /// Column of this model.
    pub column: String,
    /// The lake table or model referred to.
    pub to: String,
    /// Column of `to` (default: the same name as `column`).
    #[serde(default)]
    pub field: Option<String>,
}

impl Relationship {
    /// The referred column.
    pub fn field(&self) -> &str {
        self.field.as_deref().unwrap_or(&self.column)
    }
}

/// Inclusive bounds on a row count.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowCount {
    /// At least this many rows.
    #[serde(default)]
    pub min: Option<u64>,
    /// At most this many rows.
    #[serde(default)]
    pub max: Option<u64>,
}

impl ModelsConfig {
    /// Rejects impossible combinations before any I/O.
    pub fn validate(&self, has_clickhouse: bool) -> Result<(), ConfigError> {
        let invalid = |model: &str, field: &str, reason: &str| ConfigError::Invalid {
            table: model.to_string(),
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if self.path.trim().is_empty() {
            return Err(invalid("-", "models.path", "is empty"));
        }
        if self.clickhouse == Some(true) && !has_clickhouse {
            return Err(invalid(
                "-",
                "models.clickhouse",
                "is true but the config has no [clickhouse] section",
            ));
        }
        for (name, model) in &self.models {
            if model.clickhouse == Some(true) && !has_clickhouse {
                return Err(invalid(
                    name,
                    "clickhouse",
                    "is true but the config has no [clickhouse] section",
                ));
            }
            if let Some(RowCount {
                min: Some(min),
                max: Some(max),
            }) = model.checks.row_count
            {
                if min > max {
                    return Err(invalid(name, "checks.row_count", "has min > max"));
                }
            }
            if model
                .key
                .as_ref()
                .is_some_and(|k| k.iter().any(String::is_empty))
            {
                return Err(invalid(name, "key", "has an empty column name"));
            }
        }
        Ok(())
    }

    /// Whether the model `name` is loaded into ClickHouse.
    pub fn loads_clickhouse(&self, name: &str, has_clickhouse: bool) -> bool {
        self.models
            .get(name)
            .and_then(|m| m.clickhouse)
            .or(self.clickhouse)
            .unwrap_or(has_clickhouse)
    }
}

/// The `(name, path)` of each `*.sql` file directly in `dir`, sorted by name.
pub fn model_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, ModelError> {
    let folder_error = |message: String| ModelError::Folder {
        path: dir.to_path_buf(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| folder_error(e.to_string()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| folder_error(e.to_string()))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") || !path.is_file() {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        files.push((name.to_string(), path.clone()));
    }
    files.sort();
    Ok(files)
}

/// Names of the models of `config` (the `.sql` files of `[models] path`), for
/// registering them in `sluice query`. None without a `[models]` section.
pub fn model_names(config: &Config, base: &Path) -> crate::error::Result<Vec<String>> {
    match &config.models {
        None => Ok(Vec::new()),
        Some(models) => Ok(model_files(&base.join(&models.path))?
            .into_iter()
            .map(|(name, _)| name)
            .collect()),
    }
}
