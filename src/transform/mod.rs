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
mod diagnostics;
pub mod keys;
mod materialize;
pub mod models;
pub mod project;
mod report;
mod runner;

/// The `[models]` section lives with the rest of the pipeline file; this path
/// keeps `transform::config::…` working.
pub use crate::config::models as config;
pub use crate::config::models::model_names;
pub use crate::error::ModelError;
pub use checks::CheckOutcome;
pub use materialize::write_table;
pub use models::{run_models, ModelReport, ModelStatus, ModelsOptions};
pub use project::{Model, Project};

/// A SQL identifier, quoted so its case is kept.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
