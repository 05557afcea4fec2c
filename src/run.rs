//! One nightly run: every table of the config through its capture mode and the
//! one table driver ([`crate::pipeline::table::drive`]), up to `jobs` at a time,
//! and the run report.
//!
//! For each table the order is what makes reruns and crashes safe:
//!
//! 1. new Parquet files are written under fresh names (invisible: not in the manifest);
//! 2. the manifest is replaced in one conditional PUT: the lake now shows the new
//!    files, and the touched days are recorded as `pending_warehouse`;
//! 3. replaced files are deleted;
//! 4. each pending day is loaded into ClickHouse with `REPLACE PARTITION` and its
//!    row count checked;
//! 5. the manifest is replaced again with the new watermark and no pending days.
//!
//! A crash before 2 leaves orphan files that the next run deletes; a crash after 2
//! makes the next run re-read from the old watermark, which merges by key (no
//! duplicates) and loads the pending days again (replace, not append).
//!
//! The SQL models run beside the tables: each starts once the tables it reads have
//! reached step 2 above, the lake showing their new files ([`LakeCommits`]).
//!
//! A backfill (`RunOptions::backfill`, see [`crate::capture::backfill`]) is the same
//! run over a range of the cursor, whose commits keep the watermark and boundary
//! keys as they were.

use std::path::Path as FsPath;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;
use tracing::{info, info_span, warn, Instrument};

use crate::capture::backfill::{Backfill, BackfillRange};
use crate::capture::change_stream::ChangeStream;
use crate::capture::snapshot::Snapshot;
use crate::capture::watermark::Watermark;
use crate::config::{CaptureConfig, Config};
use crate::error::{register_url_secret, Error, Result};
use crate::lake::Lake;
use crate::pipeline::table::{drive, TableRun};
use crate::pipeline::{LakeCommits, TableReport};
use crate::warehouse::Warehouse;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only these tables (all when empty).
    pub tables: Vec<String>,
    /// Rebuild a table from a full reload when its source schema changed in a way
    /// the lake cannot follow (a dropped column, a narrower or different type).
    pub allow_schema_change: bool,
    /// Read again the rows whose cursor falls on these days and merge them, without
    /// moving the watermark (watermark tables only).
    pub backfill: Option<Backfill>,
    /// Tables run at the same time (0 or 1: one after the other).
    pub jobs: usize,
}

/// What a whole run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    /// Set when the run was a backfill of these days of the cursor.
    pub backfill: Option<BackfillRange>,
    pub tables: Vec<TableReport>,
    /// The SQL models, run beside the tables (see `src/transform/`).
    pub models: Vec<crate::transform::ModelReport>,
    pub error: Option<String>,
}

/// Runs the pipeline: the tables, up to `jobs` at a time, and beside them the
/// SQL models, each once the tables it reads are committed to the lake. After a
/// table's failure no further table starts (those already started finish and
/// commit on their own), and the models that read a table that failed or did
/// not run are skipped; the run returns the first error.
pub async fn run(config: &Config, base: &FsPath, options: &RunOptions) -> Result<RunReport> {
    if let Some(unknown) = options.tables.iter().find(|t| config.table(t).is_none()) {
        return Err(Error::Config(crate::error::ConfigError::Invalid {
            table: unknown.clone(),
            field: "--table".into(),
            reason: "is not a table of this config".into(),
        }));
    }
    if options.backfill.is_some() {
        if options.allow_schema_change {
            return Err(Error::Config(crate::error::ConfigError::Argument(
                "--allow-schema-change rebuilds a table from a full reload; it cannot be part of a backfill (--since/--until)".into(),
            )));
        }
        crate::capture::backfill::check_tables(config, &options.tables)?;
    }
    for source in config.sources.values() {
        register_url_secret(&source.url);
    }
    let lake = Lake::open(&config.lake, base)?;
    let warehouse = match &config.clickhouse {
        Some(ch) => Some(Warehouse::new(ch, &lake)?),
        None => None,
    };
    let started = chrono::Utc::now();
    let run_id = format!(
        "{}-{}",
        started.format("%Y%m%dT%H%M%S%3fZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    match &options.backfill {
        Some(b) => {
            info!(run_id = %run_id, since = %b.since, until = %b.until, "Backfill run started.")
        }
        None => info!(run_id = %run_id, "Run started."),
    }
    let mut report = RunReport {
        run_id: run_id.clone(),
        started_at: started.to_rfc3339(),
        finished_at: String::new(),
        backfill: options.backfill.map(|b| b.range()),
        tables: Vec::new(),
        models: Vec::new(),
        error: None,
    };
    // Up to `jobs` tables at a time, each on a task of its own, reported in
    // config order. After a failure no further table starts; those already
    // started finish (each commits on its own).
    let shared = Arc::new(Shared {
        config: config.clone(),
        lake: lake.clone(),
        warehouse,
        run_id: run_id.clone(),
        options: options.clone(),
        failed: AtomicBool::new(false),
    });
    let selected: Vec<String> = config
        .tables
        .iter()
        .filter(|t| options.tables.is_empty() || options.tables.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    let commits = Arc::new(LakeCommits::new(selected.iter().cloned()));
    let models = config.models.is_some().then(|| {
        let (shared, commits, base) = (
            Arc::clone(&shared),
            Arc::clone(&commits),
            base.to_path_buf(),
        );
        tokio::spawn(async move {
            let mut reports = Vec::new();
            let outcome = crate::transform::models::run_after_tables(
                &shared.config,
                &base,
                &shared.lake,
                shared.warehouse.as_ref(),
                &shared.run_id,
                &Default::default(),
                Some(&commits),
                &mut reports,
            )
            .await;
            (outcome, reports)
        })
    });
    let runs = selected.into_iter().enumerate().map(|(index, name)| {
        let (shared, commits) = (Arc::clone(&shared), Arc::clone(&commits));
        async move {
            let task = tokio::spawn(run_table(
                Arc::clone(&shared),
                name.clone(),
                Arc::clone(&commits),
            ));
            let outcome = match task.await {
                Ok(outcome) => outcome,
                Err(e) => Some(Err(Error::capture(
                    &name,
                    format!("the table's run stopped: {e}"),
                ))),
            };
            match &outcome {
                Some(Ok(_)) => commits.committed(&name),
                _ => {
                    shared.failed.store(true, Ordering::SeqCst);
                    commits.failed(&name);
                }
            }
            (index, outcome)
        }
    });
    // Unordered: a long table does not keep the next ones from starting.
    let mut outcomes: Vec<(usize, Option<Result<TableReport>>)> = futures::stream::iter(runs)
        .buffer_unordered(options.jobs.max(1))
        .collect()
        .await;
    outcomes.sort_by_key(|(index, _)| *index);
    let mut failure = None;
    for outcome in outcomes.into_iter().filter_map(|(_, outcome)| outcome) {
        match outcome {
            Ok(table_report) => report.tables.push(table_report),
            Err(e) if failure.is_none() => {
                report.error = Some(e.to_string());
                failure = Some(e);
            }
            Err(e) => warn!(error = %e, "Another table failed too."),
        }
    }
    if let Some(models) = models {
        let (outcome, reports) = models
            .await
            .map_err(|e| Error::Query(format!("the models' run stopped: {e}")))?;
        report.models = reports;
        if let Err(e) = outcome {
            if failure.is_none() {
                report.error = Some(e.to_string());
                failure = Some(e);
            } else {
                warn!(error = %e, "The models failed too.");
            }
        }
    }
    report.finished_at = chrono::Utc::now().to_rfc3339();
    let json = serde_json::to_value(&report).map_err(|e| Error::lake(e.to_string()))?;
    if let Err(e) = lake
        .put_json(&format!("_sluice/runs/{run_id}.json"), &json)
        .await
    {
        warn!(error = %e, "Could not store the run report.");
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// What the tasks of one run share.
struct Shared {
    config: Config,
    lake: Lake,
    warehouse: Option<Warehouse>,
    run_id: String,
    options: RunOptions,
    /// A table failed: no further table starts.
    failed: AtomicBool,
}

/// One table's run (None: not started, after another table failed).
async fn run_table(
    shared: Arc<Shared>,
    name: String,
    commits: Arc<LakeCommits>,
) -> Option<Result<TableReport>> {
    if shared.failed.load(Ordering::SeqCst) {
        return None;
    }
    let Shared {
        config,
        lake,
        warehouse,
        run_id,
        options,
        ..
    } = shared.as_ref();
    let table = config.table(&name).expect("a table of the config");
    let span = info_span!("table", table = %table.name);
    let progress = crate::progress::table(&table.name);
    let on_committed = || commits.committed(&name);
    let run = TableRun {
        config,
        table,
        lake,
        warehouse: warehouse.as_ref(),
        run_id,
        progress: &progress,
        on_committed: &on_committed,
    };
    let outcome = async {
        match &table.capture {
            CaptureConfig::Watermark(settings) => {
                let capture = Watermark {
                    table,
                    settings,
                    allow_schema_change: options.allow_schema_change,
                    backfill: options.backfill.as_ref(),
                };
                drive(&run, &capture).await
            }
            CaptureConfig::ChangeStream(mongo) => drive(&run, &ChangeStream { table, mongo }).await,
            CaptureConfig::Snapshot(mongo) | CaptureConfig::SnapshotDiff(mongo) => {
                drive(&run, &Snapshot { table, mongo }).await
            }
        }
    }
    .instrument(span)
    .await;
    if outcome.is_ok() {
        progress.finish();
    }
    Some(outcome)
}
