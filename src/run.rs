//! One nightly run: for each table, extract what changed, commit it to the lake,
//! load the touched partitions into ClickHouse, then advance the watermark.
//!
//! The order is what makes reruns and crashes safe:
//!
//! 1. new Parquet files are written under fresh names (invisible: not in the manifest);
//! 2. the manifest is replaced in one PUT: the lake now shows the new files, and the
//!    touched days are recorded as `pending_warehouse`;
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

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::capture::backfill::{backfill_query, Backfill, BackfillRange};
use crate::capture::merge::{conform, merge_partition};
use crate::capture::watermark::{extract_query, CursorColumn, CursorValue, WatermarkTracker};
use crate::config::{Config, TableConfig};
use crate::error::{register_url_secret, Error, Result};
use crate::fault;
use crate::lake::lock::TableLock;
use crate::lake::manifest::{FileEntry, Manifest, PartitionEntry};
use crate::lake::schema::{self, SchemaChange};
use crate::lake::writer::{day_string, parse_day, split_by_day, FileRoller};
use crate::lake::Lake;
use crate::progress::{Stage, TableProgress};
use crate::source::sql::Dialect;
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

/// Which tables of a run have committed their new lake version: the SQL models
/// run beside the tables, each as soon as every table it reads is committed
/// (its ClickHouse load may still be going on; models read the lake).
#[derive(Debug)]
pub struct LakeCommits {
    state: tokio::sync::watch::Sender<BTreeMap<String, Commit>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Pending,
    Committed,
    /// The table failed, or did not start after another one failed.
    Failed,
}

impl LakeCommits {
    /// The tables of a run, none committed yet.
    pub fn new(tables: impl IntoIterator<Item = String>) -> Self {
        let state = tables.into_iter().map(|t| (t, Commit::Pending)).collect();
        Self {
            state: tokio::sync::watch::Sender::new(state),
        }
    }

    /// Whether `table` is one of the run's tables (the others are read as the
    /// lake has them).
    pub fn in_run(&self, table: &str) -> bool {
        self.state.borrow().contains_key(table)
    }

    fn set(&self, table: &str, to: Commit) {
        self.state.send_modify(|state| {
            if let Some(commit) = state.get_mut(table) {
                if *commit == Commit::Pending {
                    *commit = to;
                }
            }
        });
    }

    /// `table`'s new version is in the lake.
    pub fn committed(&self, table: &str) {
        self.set(table, Commit::Committed);
    }

    /// `table` failed or will not run: what reads it will not run either.
    pub fn failed(&self, table: &str) {
        self.set(table, Commit::Failed);
    }

    /// Whether every one of `tables` that is in the run is committed (`false`:
    /// some are still running); the name of one that failed.
    pub fn state_of(&self, tables: &BTreeSet<String>) -> std::result::Result<bool, String> {
        let state = self.state.borrow();
        if let Some(failed) = tables
            .iter()
            .find(|t| state.get(*t) == Some(&Commit::Failed))
        {
            return Err(failed.clone());
        }
        Ok(tables
            .iter()
            .all(|t| state.get(t) != Some(&Commit::Pending)))
    }

    /// A receiver that sees every change of the tables' state.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<impl Sized> {
        self.state.subscribe()
    }
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
    let warehouse = warehouse.as_ref();
    let table = config.table(&name).expect("a table of the config");
    let span = info_span!("table", table = %table.name);
    let progress = crate::progress::table(&table.name);
    let ctx = TableRun {
        config,
        table,
        lake,
        warehouse,
        run_id,
        allow_schema_change: options.allow_schema_change,
        backfill: options.backfill.as_ref(),
        progress: &progress,
        commits: &commits,
    };
    let outcome = async {
        let lock = TableLock::acquire(lake, &table.name, run_id).await?;
        let outcome = match table.mode {
            crate::config::CaptureMode::Watermark => ctx.run().await,
            crate::config::CaptureMode::ChangeStream => {
                progress.stage(Stage::Snapshot, None);
                crate::capture::change_stream::run_table(config, table, lake, warehouse, run_id)
                    .await
            }
            crate::config::CaptureMode::Snapshot | crate::config::CaptureMode::SnapshotDiff => {
                progress.stage(Stage::Snapshot, None);
                crate::capture::snapshot::run_table(config, table, lake, warehouse, run_id).await
            }
        };
        // A failed release leaves a lock that expires (or is seen as dead) later.
        if let Err(e) = lock.release().await {
            warn!(error = %e, "Could not release the table lock.");
        }
        outcome
    }
    .instrument(span)
    .await;
    if outcome.is_ok() {
        progress.finish();
    }
    Some(outcome)
}

struct TableRun<'a> {
    config: &'a Config,
    table: &'a TableConfig,
    lake: &'a Lake,
    warehouse: Option<&'a Warehouse>,
    run_id: &'a str,
    allow_schema_change: bool,
    backfill: Option<&'a Backfill>,
    progress: &'a TableProgress,
    /// Told when the table's lake version is committed (before ClickHouse).
    commits: &'a LakeCommits,
}

/// Days merged at the same time by an incremental run. A day's merge is mostly
/// waiting on the lake (one GET per old file, one PUT per new one); each holds
/// one day's writer and its changed keys, a few MiB for a daily file. Measured on
/// the fintech incremental (~300 touched days per table): 4 → 16 took the merge
/// stage from ~7-11 s to the figure in benches/README.md.
const MERGE_CONCURRENCY: usize = 16;

/// One day after the merge: its final files, and what they replaced.
struct MergedDay {
    day_name: String,
    files: Vec<FileEntry>,
    /// What the merge found, for a day that had files (`None` for a new day).
    merged: Option<crate::capture::merge::Merged>,
    /// The day's previous files (relative paths), deleted after the commit.
    replaced: Vec<String>,
}

/// Files written for one day during the extract.
enum DayOutput {
    /// The day had no files: these are its final files.
    New(Vec<FileEntry>),
    /// The day had files: these staged files must be merged into them.
    Staged(Vec<FileEntry>),
}

impl TableRun<'_> {
    async fn run(&self) -> Result<TableReport> {
        let started = Instant::now();
        let t = self.table;
        let name = t.name.as_str();
        let mut report = TableReport {
            table: t.name.clone(),
            ..Default::default()
        };
        let mut manifest = match self.lake.read_manifest(name).await? {
            Some(m) => {
                if m.partition_column != t.partition_by || m.key != t.key {
                    return Err(Error::capture(
                        name,
                        format!(
                            "the lake's table was built with partition_by = {:?} and key = {:?}; the config now says {:?} and {:?} (delete the table's folder to rebuild it)",
                            m.partition_column, m.key, t.partition_by, t.key
                        ),
                    ));
                }
                m
            }
            None => Manifest::new(name, &t.partition_by, &t.key),
        };
        report.watermark_before = manifest.watermark.map(|w| w.to_string());
        // A backfill reads a range of the cursor in the watermark's type.
        let backfill = match self.backfill {
            Some(b) => Some(b.cursor_range(name, &t.cursor, manifest.watermark.as_ref())?),
            None => None,
        };
        self.remove_orphans(&manifest).await?;

        let source = &self.config.sources[&t.source];
        let dialect = Dialect::from(source.kind);
        // A source table is read through a typed SELECT (source::types): exact
        // decimals, JSON as text, UTC instants; uncarriable types fail here.
        let typed = match &t.source_table {
            Some(table) => {
                Some(crate::source::types::plan(name, source.kind, &source.url, table).await?)
            }
            None => None,
        };
        let base = match (&typed, &t.query) {
            (Some(typed), _) => typed.sql.clone(),
            (None, Some(query)) => query.trim().trim_end_matches(';').to_string(),
            (None, None) => unreachable!("validated: one of source_table and query"),
        };
        let sql = match &backfill {
            Some(range) => backfill_query(dialect, &base, &t.cursor, &t.partition_by, range),
            None => extract_query(
                dialect,
                &base,
                &t.cursor,
                &t.partition_by,
                manifest.watermark.as_ref(),
            ),
        };
        match &backfill {
            Some(range) => info!(from = %range.from, to = %range.to, "Backfill extract started."),
            None => info!(from = ?report.watermark_before, "Extract started."),
        }
        let stage = Instant::now();
        self.progress.stage(Stage::Extract, None);
        let mut stream = crate::source::sql::read(name, &source.url, sql, t.batch_rows).await?;
        if let Some(typed) = &typed {
            stream = typed.apply(name, stream)?;
        }
        let schema = stream.schema.clone();
        let (cursor, key_columns, partition_column) = self.check_columns(&schema)?;

        // Schema evolution: additions and widenings are followed; anything else stops
        // the table unless a rebuild (a full reload) was asked for.
        let mut replaced_files: Vec<String> = Vec::new();
        let change = schema::compare(&manifest.schema, &schema);
        match &change {
            SchemaChange::Same => {}
            SchemaChange::Evolve { added, widened } => {
                let text = describe_evolution(added, widened);
                info!(change = %text, "Source schema evolved.");
                report.warnings.push(format!("schema evolved: {text}"));
            }
            SchemaChange::Incompatible(reasons) if backfill.is_some() => {
                return Err(Error::capture(
                    name,
                    format!(
                        "the source's schema changed in a way the lake cannot follow ({}); a backfill does not rebuild a table: run `sluice run --table {name} --allow-schema-change` first",
                        reasons.join("; ")
                    ),
                ));
            }
            SchemaChange::Incompatible(reasons) if !self.allow_schema_change => {
                return Err(Error::capture(
                    name,
                    format!(
                        "the source's schema changed in a way the lake cannot follow ({}); rerun with --allow-schema-change to rebuild the table from a full reload",
                        reasons.join("; ")
                    ),
                ));
            }
            SchemaChange::Incompatible(reasons) => {
                warn!(reasons = %reasons.join("; "), "Rebuilding the table from a full reload.");
                report
                    .warnings
                    .push(format!("table rebuilt: {}", reasons.join("; ")));
                replaced_files.extend(manifest.live_files().into_iter().map(String::from));
                let mut fresh = Manifest::new(name, &t.partition_by, &t.key);
                fresh.version = manifest.version;
                fresh.schema_version = manifest.schema_version;
                fresh.schema_history = std::mem::take(&mut manifest.schema_history);
                fresh.warehouse_rebuild = self.warehouse.is_some();
                manifest = fresh;
                if report.watermark_before.is_some() {
                    drop(stream);
                    let sql = extract_query(dialect, &base, &t.cursor, &t.partition_by, None);
                    stream = crate::source::sql::read(name, &source.url, sql, t.batch_rows).await?;
                    if let Some(typed) = &typed {
                        stream = typed.apply(name, stream)?;
                    }
                    if stream.schema != schema {
                        return Err(Error::capture(
                            name,
                            "the source's schema changed again during the rebuild; rerun",
                        ));
                    }
                }
            }
        }
        // A backfill skips nothing at the watermark: every row of its range is merged.
        let mut tracker = match backfill {
            Some(_) => WatermarkTracker::new(cursor, key_columns.clone(), None, &[]),
            None => WatermarkTracker::new(
                cursor,
                key_columns.clone(),
                manifest.watermark,
                &manifest.boundary_keys,
            ),
        };

        // Extract: one open writer at a time, since rows arrive ordered by day.
        let mut outputs: BTreeMap<i32, DayOutput> = BTreeMap::new();
        let mut open: Option<(i32, FileRoller)> = None;
        let mut rollers = 0usize;
        let mut batches = stream.batches;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            report.rows_read += batch.num_rows() as u64;
            self.progress.rows_read(batch.num_rows() as u64);
            let batch = tracker
                .observe(batch)
                .map_err(|e| Error::capture(name, e))?;
            let batch = conform(name, &schema, batch)?;
            let slices = split_by_day(&batch, partition_column, &t.partition_by)
                .map_err(|e| Error::capture(name, e))?;
            for slice in slices {
                if open.as_ref().map(|(d, _)| *d) != Some(slice.day) {
                    if let Some((day, roller)) = open.take() {
                        self.close_day(&mut outputs, day, roller, &manifest).await?;
                    }
                    let roller = self.open_day(slice.day, &manifest, &schema, rollers)?;
                    rollers += 1;
                    open = Some((slice.day, roller));
                }
                let (_, roller) = open.as_mut().expect("opened above");
                report.rows_changed += slice.batch.num_rows() as u64;
                roller.write(&slice.batch).await?;
                fault::point("extract.batch");
            }
        }
        if let Some((day, roller)) = open.take() {
            self.close_day(&mut outputs, day, roller, &manifest).await?;
        }
        report.rows_skipped = tracker.skipped;
        if tracker.null_cursor_rows > 0 {
            report.warnings.push(format!(
                "{} row(s) have a NULL {}: they are loaded now but later changes to them are not seen",
                tracker.null_cursor_rows, t.cursor
            ));
        }
        let (new_watermark, new_boundary) = match backfill {
            // The backfill's own commit path: the capture position stays.
            Some(_) => (manifest.watermark, manifest.boundary_keys.clone()),
            None => tracker.finish(),
        };
        if let (Some(old), Some(new)) = (manifest.watermark, new_watermark) {
            if new < old {
                report
                    .warnings
                    .push(format!("cursor went backwards: {new} < {old}"));
            }
        }
        info!(
            rows_read = report.rows_read,
            rows_changed = report.rows_changed,
            rows_skipped = report.rows_skipped,
            "Extract finished."
        );
        report.stages.extract = stage.elapsed().as_secs_f64();
        let stage = Instant::now();

        // Merge staged days into their committed files, then build the next manifest.
        let mut next = manifest.clone();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let staged_days = outputs
            .values()
            .filter(|o| matches!(o, DayOutput::Staged(_)))
            .count();
        if staged_days > 0 {
            self.progress.stage(Stage::Merge, Some(staged_days as u64));
        }
        // Days are merged a few at a time: each is mostly waiting on the lake (read
        // the old files, write the new ones), and each holds one day's writer.
        let first_seq = rollers;
        let skip_identical = backfill.is_some();
        let merges = outputs.into_iter().enumerate().map(|(i, (day, output))| {
            let seq = first_seq + i;
            self.merge_day(
                &manifest,
                &schema,
                &key_columns,
                seq,
                day,
                output,
                skip_identical,
            )
        });
        let mut merged_days = futures::stream::iter(merges).buffered(MERGE_CONCURRENCY);
        while let Some(merged) = merged_days.next().await {
            let MergedDay {
                day_name,
                files,
                merged,
                replaced,
            } = merged?;
            if let Some(merged) = merged {
                // Rows a backfill read exactly as the lake has them.
                report.rows_changed -= merged.identical_rows;
                report.rows_skipped += merged.identical_rows;
                self.progress.day_merged();
                if merged.unchanged {
                    continue;
                }
                report.rows_replaced += merged.replaced_rows - merged.identical_rows;
                replaced_files.extend(replaced);
                self.progress
                    .bytes_written(files.iter().map(|f| f.bytes).sum());
            }
            report.files_written += files.len();
            report.bytes_written += files.iter().map(|f| f.bytes).sum::<u64>();
            let rows = files.iter().map(|f| f.rows).sum();
            next.partitions
                .insert(day_name.clone(), PartitionEntry { rows, files });
            touched.insert(day_name);
        }
        drop(merged_days);
        report.partitions_written = touched.iter().cloned().collect();
        report.stages.merge = stage.elapsed().as_secs_f64();

        let schema_moves = !matches!(change, SchemaChange::Same) || manifest.schema.is_empty();
        let watermark_moves =
            new_watermark != manifest.watermark || new_boundary != manifest.boundary_keys;
        if touched.is_empty()
            && manifest.pending_warehouse.is_empty()
            && !watermark_moves
            && !schema_moves
            && !manifest.warehouse_rebuild
        {
            info!("Nothing changed.");
            report.watermark_after = report.watermark_before.clone();
            report.lake_rows = manifest.rows();
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }

        // Commit 1: the lake shows the new files.
        if schema_moves {
            next.record_schema(&schema);
        }
        next.run_id = self.run_id.to_string();
        if self.warehouse.is_some() {
            next.pending_warehouse.extend(touched.iter().cloned());
        } else {
            next.watermark = new_watermark;
            next.boundary_keys = new_boundary.clone();
        }
        let stage = Instant::now();
        fault::point("lake.before_commit");
        self.commit(&mut next).await?;
        fault::point("lake.after_commit");
        self.lake
            .delete_files(name, replaced_files.iter().map(String::as_str))
            .await?;
        fault::point("lake.after_delete");
        report.stages.commit = stage.elapsed().as_secs_f64();
        // The models that read the table may start; ClickHouse loads meanwhile.
        self.commits.committed(name);
        info!(
            partitions = touched.len(),
            version = next.version,
            "Lake committed."
        );

        // Load the pending days, then commit 2: the watermark moves.
        if let Some(warehouse) = self.warehouse {
            let stage = Instant::now();
            if next.warehouse_rebuild {
                warehouse.drop_table(name).await?;
                // Every day of the rebuilt lake goes in again.
                next.pending_warehouse = next.partitions.keys().cloned().collect();
            }
            warehouse.ensure_table(t, &schema).await?;
            let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let oldest_kept = t.retention_days.map(|days| {
                let today =
                    parse_day(&chrono::Utc::now().format("%Y-%m-%d").to_string()).unwrap_or(0);
                today - days as i32
            });
            let mut days = Vec::with_capacity(next.pending_warehouse.len());
            self.progress
                .stage(Stage::Load, Some(next.pending_warehouse.len() as u64));
            for day in &next.pending_warehouse {
                if let (Some(oldest), Some(d)) = (oldest_kept, parse_day(day)) {
                    if d < oldest {
                        report.warnings.push(format!(
                            "partition {day} is older than retention_days and was not loaded into ClickHouse"
                        ));
                        continue;
                    }
                }
                let partition = next.partitions.get(day).cloned().unwrap_or_default();
                days.push((day.clone(), partition));
            }
            let loaded = warehouse
                .load_partitions_with(t, &columns, &days, |day| {
                    self.progress.partition_loaded(day)
                })
                .await?;
            for (day, rows) in loaded {
                debug!(partition = %day, rows, "Partition loaded.");
                report.partitions_loaded.push(day);
                report.rows_loaded += rows;
            }
            info!(
                partitions = report.partitions_loaded.len(),
                rows = report.rows_loaded,
                "Loaded into ClickHouse."
            );
            report.stages.warehouse = stage.elapsed().as_secs_f64();
            let stage = Instant::now();
            fault::point("run.before_final_commit");
            next.pending_warehouse.clear();
            next.warehouse_rebuild = false;
            next.watermark = new_watermark;
            next.boundary_keys = new_boundary;
            self.commit(&mut next).await?;
            fault::point("run.after_final_commit");
            report.stages.commit += stage.elapsed().as_secs_f64();
        }
        report.watermark_after = next.watermark.map(|w: CursorValue| w.to_string());
        report.lake_rows = next.rows();
        report.seconds = started.elapsed().as_secs_f64();
        for warning in &report.warnings {
            warn!(warning = %warning, "Table warning.");
        }
        info!(
            rows_changed = report.rows_changed,
            rows_loaded = report.rows_loaded,
            seconds = report.seconds,
            "Table done."
        );
        Ok(report)
    }

    /// The final files of one day written by the extract: as they are for a new
    /// day, or its committed files merged with the staged changed rows.
    #[allow(clippy::too_many_arguments)]
    async fn merge_day(
        &self,
        manifest: &Manifest,
        schema: &SchemaRef,
        key_columns: &[usize],
        seq: usize,
        day: i32,
        output: DayOutput,
        skip_identical: bool,
    ) -> Result<MergedDay> {
        let day_name = day_string(day);
        let staged = match output {
            DayOutput::New(files) => {
                return Ok(MergedDay {
                    day_name,
                    files,
                    merged: None,
                    replaced: Vec::new(),
                })
            }
            DayOutput::Staged(staged) => staged,
        };
        let name = self.table.name.as_str();
        let old = manifest
            .partitions
            .get(&day_name)
            .cloned()
            .unwrap_or_default();
        let table_dir = self.lake.table_path(name);
        let old_paths: Vec<_> = old
            .files
            .iter()
            .map(|f| (join(&table_dir, &f.path), f.bytes))
            .collect();
        let staged_paths: Vec<_> = staged
            .iter()
            .map(|f| (self.lake.path(&f.path), f.bytes))
            .collect();
        let roller = self.open_final(day, schema, seq)?;
        let mut merged = merge_partition(
            name,
            self.lake,
            schema,
            key_columns,
            &old_paths,
            &staged_paths,
            roller,
            skip_identical,
        )
        .await?;
        for (path, _) in &staged_paths {
            self.lake.store().delete(path).await?;
        }
        Ok(MergedDay {
            day_name,
            files: std::mem::take(&mut merged.files),
            merged: Some(merged),
            replaced: old.files.into_iter().map(|f| f.path).collect(),
        })
    }

    /// Resolves the configured columns in the source's schema.
    fn check_columns(&self, schema: &SchemaRef) -> Result<(CursorColumn, Vec<usize>, usize)> {
        let t = self.table;
        let name = t.name.as_str();
        let cursor = CursorColumn::new(schema, &t.cursor).map_err(|e| Error::capture(name, e))?;
        let find = |column: &str, role: &str| {
            schema.index_of(column).map_err(|_| {
                Error::capture(
                    name,
                    format!(
                        "{role} column {column:?} is not in the source's columns ({})",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        };
        let keys = t
            .key
            .iter()
            .map(|k| find(k, "key"))
            .collect::<Result<Vec<_>>>()?;
        let partition = find(&t.partition_by, "partition_by")?;
        Ok((cursor, keys, partition))
    }

    fn day_dir(&self, day: i32) -> String {
        format!("{}={}", self.table.partition_by, day_string(day))
    }

    /// A day's files are sorted by the key within each row group.
    fn open_final(&self, day: i32, schema: &SchemaRef, seq: usize) -> Result<FileRoller> {
        let rel = self.day_dir(day);
        let dir = join(&self.lake.table_path(&self.table.name), &rel);
        FileRoller::new(
            self.lake,
            dir,
            rel,
            &format!("{}-{seq}", self.run_id),
            schema.clone(),
        )
        .sorted_by(&self.table.key)
    }

    fn open_day(
        &self,
        day: i32,
        manifest: &Manifest,
        schema: &SchemaRef,
        seq: usize,
    ) -> Result<FileRoller> {
        if manifest.partitions.contains_key(&day_string(day)) {
            // Staged rows are merged into the day by `open_final`'s roller, which
            // sorts them: no need to sort them here. The staging folder names the
            // run already; short names keep keys within what S3 stand-ins that map
            // keys to file names (s3s-fs) accept.
            let rel = format!("{}/{}", self.staging_dir(), self.day_dir(day));
            Ok(FileRoller::new(
                self.lake,
                self.lake.path(&rel),
                rel,
                &seq.to_string(),
                schema.clone(),
            ))
        } else {
            self.open_final(day, schema, seq)
        }
    }

    async fn close_day(
        &self,
        outputs: &mut BTreeMap<i32, DayOutput>,
        day: i32,
        roller: FileRoller,
        manifest: &Manifest,
    ) -> Result<()> {
        let files = roller.finish().await?;
        self.progress
            .bytes_written(files.iter().map(|f| f.bytes).sum());
        let staged = manifest.partitions.contains_key(&day_string(day));
        match outputs.entry(day).or_insert_with(|| {
            if staged {
                DayOutput::Staged(Vec::new())
            } else {
                DayOutput::New(Vec::new())
            }
        }) {
            DayOutput::New(v) | DayOutput::Staged(v) => v.extend(files),
        }
        Ok(())
    }

    fn staging_dir(&self) -> String {
        format!("_sluice/staging/{}/{}", self.table.name, self.run_id)
    }

    /// Deletes files a crashed run left behind: Parquet files in the table folder
    /// that the manifest does not list, and this table's staging folder.
    async fn remove_orphans(&self, manifest: &Manifest) -> Result<()> {
        let name = &self.table.name;
        self.lake.remove_orphans(name, Some(manifest)).await?;
        let staging = format!("_sluice/staging/{name}");
        for (path, _) in self.lake.list(&staging).await? {
            self.lake
                .store()
                .delete(&self.lake.path(&format!("{staging}/{path}")))
                .await?;
        }
        Ok(())
    }

    async fn commit(&self, next: &mut Manifest) -> Result<()> {
        next.version += 1;
        next.committed_at = chrono::Utc::now().to_rfc3339();
        self.lake.write_manifest(next).await
    }
}

fn join(base: &object_store::path::Path, relative: &str) -> object_store::path::Path {
    relative
        .split('/')
        .fold(base.clone(), |p, part| p.join(part))
}

fn describe_evolution(
    added: &[arrow::datatypes::FieldRef],
    widened: &[(arrow::datatypes::FieldRef, arrow::datatypes::DataType)],
) -> String {
    added
        .iter()
        .map(|f| format!("added {} {}", f.name(), f.data_type()))
        .chain(
            widened
                .iter()
                .map(|(f, old)| format!("widened {} {old} -> {}", f.name(), f.data_type())),
        )
        .collect::<Vec<_>>()
        .join(", ")
}
