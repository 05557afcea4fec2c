//! `sluice query`: SQL over the lake's committed files, with DataFusion.
//!
//! Every table of the config that has a manifest is registered under its own name.
//! A table is exactly the files its manifest lists as live: files merely present in
//! a partition folder (a run that died before its commit, a merge's leftovers) are
//! never read, because the scan is built from the manifest and the folder is never
//! listed.
//!
//! Columns: every column of the Parquet files as stored, including the partition
//! column with its full value (`created_at` as a timestamp), plus one more,
//! `<partition column>_day` (`Date32`, never null), the day of the partition folder
//! the row's file lives in. Filters that use only that day column (`WHERE
//! created_at_day = DATE '2026-11-25'`, `BETWEEN`, `IN`, …) are evaluated once per
//! partition before any file is opened, so such a query reads that day's files
//! only. A filter on the full timestamp is still correct but prunes only through
//! Parquet statistics, after opening each file's footer.
//!
//! Queries are read-only: DDL, DML and `SET` statements are refused;
//! `information_schema` (`SHOW TABLES`, `SHOW COLUMNS FROM t`) is available.
//! Results go to stdout or `--output FILE` as a pretty table (which holds the whole
//! result in memory to size its columns), CSV, JSON lines or Parquet; the last
//! three stream batch by batch.
//!
//! `--as-of YYYY-MM-DD` reads snapshot and change tables as they were on that day
//! ([`as_of`]); `sluice shell` is an interactive prompt over the same session
//! ([`shell`]).

pub mod as_of;
pub mod shell;
pub mod sort_within_days;
pub mod table_provider;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use crate::config::{Config, LakeConfig};
use crate::error::{Error, Result};
use crate::lake::writer::writer_properties;
use crate::lake::Lake;
use table_provider::query_error;
pub use table_provider::{lake_session, register_lake_store, LakeTable};

/// How query results are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A pretty-printed table, for reading on a terminal.
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// JSON lines: one object per row, nulls written as `null`.
    Json,
    /// A Parquet file (needs `--output`).
    Parquet,
}

/// What to do with a query's result.
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    pub format: OutputFormat,
    /// Write here instead of to the caller's writer. Required for Parquet.
    pub output: Option<PathBuf>,
}

/// The outcome of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuerySummary {
    /// Rows in the result.
    pub rows: u64,
}

/// Runs `sql` over the lake of `config` and writes the result to `options.output`,
/// or to `out` when there is none.
pub async fn query<W: Write>(
    config: &Config,
    base: &FsPath,
    sql: &str,
    options: &QueryOptions,
    out: W,
) -> Result<QuerySummary> {
    query_as_of(config, base, sql, options, None, out).await
}

/// [`query`], with the snapshot and change tables read as of `as_of` when given
/// (see [`as_of`]).
pub async fn query_as_of<W: Write>(
    config: &Config,
    base: &FsPath,
    sql: &str,
    options: &QueryOptions,
    as_of: Option<as_of::AsOf>,
    out: W,
) -> Result<QuerySummary> {
    if options.format == OutputFormat::Parquet && options.output.is_none() {
        return Err(parquet_needs_output());
    }
    let session = LakeSession::open_as_of(config, base, as_of).await?;
    let stream = session.execute(sql).await?;
    let Some(path) = &options.output else {
        return write_text(stream, options.format, out).await;
    };
    // Written beside the target and renamed when complete, so that a failed
    // query neither leaves a truncated result nor clobbers an existing file.
    let mut partial = path.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = File::create(&partial)
        .map_err(|e| Error::Query(format!("cannot create {}: {e}", partial.display())))?;
    let file = BufWriter::new(file);
    let written = match options.format {
        OutputFormat::Parquet => write_parquet(stream, file, config.lake.row_group_rows).await,
        text => write_text(stream, text, file).await,
    };
    let renamed = written.and_then(|summary| {
        std::fs::rename(&partial, path)
            .map(|()| summary)
            .map_err(|e| Error::Query(format!("cannot write {}: {e}", path.display())))
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    renamed
}

/// The state of `name` as of `when`: `Err(Some(why))` when it had no version
/// then, `Err(None)` when it was never committed.
async fn read_as_of(
    lake: &Lake,
    name: &str,
    when: as_of::AsOf,
) -> Result<std::result::Result<crate::lake::manifest::Manifest, Option<String>>> {
    let Some(latest) = lake.read_manifest(name).await? else {
        return Ok(Err(None));
    };
    if matches!(when, as_of::AsOf::Day(_)) {
        // A day is a day of the data: snapshot and change tables are read by
        // their rows, the others as they are now.
        return Ok(Ok(latest));
    }
    match lake.read_manifest_at(name, when.at()).await {
        Ok(Some(manifest)) => Ok(Ok(manifest)),
        // Written before the lake was a Delta Lake: no versions to read.
        Ok(None) => Ok(Err(Some(format!(
            "keeps no history yet (its lake folder is of the format before Delta): it cannot be read as of {when}"
        )))),
        Err(e) => Ok(Err(Some(format!("has no version as of {when}: {e}")))),
    }
}

/// A DataFusion session with every committed table of the lake registered.
pub struct LakeSession {
    ctx: SessionContext,
    /// Configured tables that cannot be read (never committed, or no version
    /// as of `--as-of`), with why: named in the error of a query on them.
    uncommitted: BTreeMap<String, String>,
}

impl LakeSession {
    /// Opens the lake of `config` and registers its committed tables.
    pub async fn open(config: &Config, base: &FsPath) -> Result<Self> {
        Self::open_as_of(config, base, None).await
    }

    /// Like [`LakeSession::open`], with the snapshot and change tables as of
    /// `as_of` when given.
    pub async fn open_as_of(
        config: &Config,
        base: &FsPath,
        as_of: Option<as_of::AsOf>,
    ) -> Result<Self> {
        check_local_lake_exists(&config.lake, base)?;
        let lake = Lake::open(&config.lake, base)?;
        let ctx = lake_session(
            SessionConfig::new().with_information_schema(true),
            Arc::new(RuntimeEnv::default()),
        );
        let store_url = register_lake_store(&ctx, &lake)?;
        let mut uncommitted = BTreeMap::new();
        // The tables, then the SQL models materialised in the lake.
        let mut names: Vec<String> = config.tables.iter().map(|t| t.name.clone()).collect();
        names.extend(crate::config::models::model_names(config, base)?);
        for name in &names {
            let read = match as_of {
                None => lake.read_manifest(name).await.map(|m| m.ok_or(None)),
                Some(when) => read_as_of(&lake, name, when).await,
            };
            match read? {
                Err(why) => {
                    let why = why.unwrap_or_else(|| "has no data yet (no committed run)".into());
                    uncommitted.insert(name.clone(), why);
                }
                Ok(manifest) => {
                    let provider = LakeTable::new(&lake, store_url.clone(), &manifest)?;
                    tracing::debug!(
                        table = %name,
                        files = provider.files.len(),
                        "Table registered."
                    );
                    match as_of {
                        Some(as_of::AsOf::Day(day)) => {
                            as_of::register(&ctx, name, &manifest, provider, day).await?;
                        }
                        Some(_) => {
                            ctx.register_table(name.as_str(), Arc::new(provider))
                                .map_err(|e| query_error(&e))?;
                        }
                        None => {
                            ctx.register_table(name.as_str(), Arc::new(provider))
                                .map_err(|e| query_error(&e))?;
                        }
                    }
                }
            }
        }
        Ok(Self { ctx, uncommitted })
    }

    /// Plans and starts one read-only SQL statement.
    pub async fn execute(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        let state = self.ctx.state();
        let dialect = state.config_options().sql_parser.dialect;
        let statement = state
            .sql_to_statement(sql, &dialect)
            .map_err(|e| query_error(&e))?;
        for reference in state
            .resolve_table_references(&statement)
            .map_err(|e| query_error(&e))?
        {
            let in_default_schema = reference.schema().is_none_or(|s| s == "public");
            if let Some(why) = self
                .uncommitted
                .get(reference.table())
                .filter(|_| in_default_schema)
            {
                return Err(Error::Query(format!("table {} {why}", reference.table())));
            }
        }
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| query_error(&e))?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| query_error(&e))?;
        let frame = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| query_error(&e))?;
        frame.execute_stream().await.map_err(|e| query_error(&e))
    }
}

/// `Lake::open` creates a missing local folder, which for a query would only hide
/// a wrong path behind "table not found".
fn check_local_lake_exists(config: &LakeConfig, base: &FsPath) -> Result<()> {
    if config.url.starts_with("s3://") {
        return Ok(());
    }
    let path = config.url.strip_prefix("file://").unwrap_or(&config.url);
    let path = base.join(path);
    if path.is_dir() {
        Ok(())
    } else {
        Err(Error::Query(format!(
            "no lake at {}: the folder does not exist (lake.url = {:?}; has `sluice run` committed anything?)",
            path.display(),
            config.url
        )))
    }
}

/// Writes every batch of `stream` to `out` as text in `format`; returns the row
/// count.
async fn write_text<W: Write>(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    mut out: W,
) -> Result<QuerySummary> {
    let schema = stream.schema();
    let mut rows = 0u64;
    match format {
        OutputFormat::Table => {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| query_error(&e))?;
                rows += batch.num_rows() as u64;
                batches.push(batch);
            }
            let table = arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)
                .map_err(output_error)?;
            writeln!(out, "{table}").map_err(output_error)?;
            out.flush().map_err(output_error)?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            let mut wrote_any = false;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| query_error(&e))?;
                rows += batch.num_rows() as u64;
                writer.write(&batch).map_err(output_error)?;
                wrote_any = true;
            }
            if !wrote_any {
                // Still print the header of an empty result.
                writer
                    .write(&RecordBatch::new_empty(schema))
                    .map_err(output_error)?;
            }
            writer.into_inner().flush().map_err(output_error)?;
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(out);
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| query_error(&e))?;
                rows += batch.num_rows() as u64;
                writer.write(&batch).map_err(output_error)?;
            }
            writer.finish().map_err(output_error)?;
            writer.into_inner().flush().map_err(output_error)?;
        }
        OutputFormat::Parquet => return Err(parquet_needs_output()),
    }
    Ok(QuerySummary { rows })
}

/// Writes every batch of `stream` as one Parquet file, with the lake's writer
/// settings; returns the row count.
async fn write_parquet<W: Write + Send>(
    mut stream: SendableRecordBatchStream,
    out: W,
    row_group_rows: usize,
) -> Result<QuerySummary> {
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        out,
        stream.schema(),
        Some(writer_properties(row_group_rows)),
    )
    .map_err(output_error)?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| query_error(&e))?;
        rows += batch.num_rows() as u64;
        writer.write(&batch).map_err(output_error)?;
    }
    let mut out = writer.into_inner().map_err(output_error)?;
    out.flush().map_err(output_error)?;
    Ok(QuerySummary { rows })
}

fn parquet_needs_output() -> Error {
    Error::Query("--format parquet writes a file: add --output FILE".into())
}

fn output_error(e: impl std::fmt::Display) -> Error {
    Error::Query(format!("writing the result: {e}"))
}
