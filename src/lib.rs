//! sluice: nightly lakehouse ETL.
//!
//! Sources (PostgreSQL, MySQL, SQLite through connectorx) are read into Arrow
//! batches, captured incrementally on a watermark, staged as date-partitioned
//! Parquet in a lake (S3 or a local folder) committed through a per-table manifest,
//! and loaded into ClickHouse partition by partition.
//!
//! The modules follow the data: [`source`] → [`capture`] → [`lake`] → [`warehouse`],
//! driven by [`run`] from a [`config`] file.

pub mod capture;
pub mod config;
pub mod demo;
pub mod demo_data;
pub mod error;
pub mod fault;
pub mod lake;
pub mod pipeline;
pub mod progress;
pub mod query;
pub mod report;
pub mod run;
pub mod source;
pub mod state;
pub mod transform;
pub mod warehouse;

pub use config::Config;
pub use error::{Error, Result};
pub use pipeline::TableReport;
pub use run::{run, RunOptions, RunReport};
