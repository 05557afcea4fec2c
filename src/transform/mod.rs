//! SQL models: `SELECT`s in `.sql` files, run with DataFusion over the lake's
//! committed tables after the extract, each materialised as a lake table (and, when
//! configured, a ClickHouse table), in dependency order.
//!
//! - [`project`] finds the models, reads their `-- sluice:` headers, parses them
//!   with DataFusion's SQL parser and orders them by the tables they read.
//! - [`models`] runs one model: plan, write Parquet, run its [`checks`], commit its
//!   manifest, load ClickHouse.
//! - [`checks`] are the data checks declared per model in the config.
//! - [`keys`] holds the keys a model's rows refer to, for `drop_unmatched` and
//!   the `relationships` check.
//!
//! Dedup ("latest row per key by version") is plain SQL, usable in any model:
//!
//! ```sql
//! SELECT * FROM users
//! QUALIFY ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY updated_at DESC) = 1
//! ```

pub mod checks;
pub mod config;
mod diagnostics;
pub mod keys;
mod materialize;
pub mod models;
pub mod project;
mod runner;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::Result;

pub use checks::CheckOutcome;
pub use materialize::write_table;
pub use models::{run_models, ModelReport, ModelStatus, ModelsOptions};
pub use project::{Model, Project};

/// Errors of the SQL models. Each names the model's file, and the line when the
/// problem has one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("models folder {}: {message}", path.display())]
    Folder { path: PathBuf, message: String },
    #[error("{}{}: model {model}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Sql {
        model: String,
        file: PathBuf,
        line: Option<u64>,
        message: String,
    },
    #[error("{}{}: model {model} reads {name}, which is neither a lake table nor a model", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    UnknownName {
        model: String,
        file: PathBuf,
        line: Option<u64>,
        name: String,
    },
    #[error("models depend on each other in a cycle: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" → "))]
    Cycle { files: Vec<PathBuf> },
    #[error("{}: model {model}: {} check(s) failed, nothing published: {}", file.display(), failures.len(), failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
    CheckFailed {
        model: String,
        file: PathBuf,
        failures: Vec<CheckOutcome>,
    },
    #[error("{} model(s) failed ({}), {} skipped downstream ({}):\n{}", failed.len(), failed.join(", "), skipped.len(), skipped.join(", "), messages.join("\n"))]
    Run {
        failed: Vec<String>,
        skipped: Vec<String>,
        messages: Vec<String>,
    },
}

/// Names of the models of `config` (the `.sql` files of `[models] path`), for
/// registering them in `sluice query`. None without a `[models]` section.
pub fn model_names(config: &Config, base: &Path) -> Result<Vec<String>> {
    match &config.models {
        None => Ok(Vec::new()),
        Some(models) => Ok(project::model_files(&base.join(&models.path))?
            .into_iter()
            .map(|(name, _)| name)
            .collect()),
    }
}
