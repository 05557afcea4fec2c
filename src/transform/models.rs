//! Running models: each one is planned by DataFusion over the lake's committed
//! tables, written as Parquet under fresh names, checked, and only then published
//! by replacing its `_manifest.json` (the same commit point as the extracted
//! tables, so `sluice query` and later models read it like any table). ClickHouse
//! is loaded from the committed files afterwards, partition by partition with
//! `REPLACE PARTITION` (an unpartitioned model is the single partition `all`).
//!
//! A model whose SQL or checks fail is not published; every model that reads it,
//! directly or not, is skipped; models that do not depend on it still run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::{RecordBatchReceiverStream, RecordBatchStreamAdapter};
use datafusion::prelude::{SessionConfig, SessionContext};

/// Memory DataFusion may use for buffering operators while running models; beyond
/// it, sorts and aggregates spill to disk.
const MODEL_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// Models run at the same time when none reads another (see
/// [`run_after_tables`]): one may compute while the other writes, checks or
/// loads ClickHouse.
const MODEL_JOBS: usize = 2;

/// Partitions of the checks' queries (see [`Runner::checks_session`]).
const CHECK_PARTITIONS: usize = 4;
use futures::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use super::checks::{run_checks, CheckOutcome, RowChecks};
use super::config::{ModelsConfig, Relationship};
use super::keys::KeySet;
use super::project::{last_line, line_in_message, line_of, Model, Project};
use super::ModelError;
use crate::config::{Config, PartitionGrain};
use crate::error::{Error, Result};
use crate::lake::manifest::{FileEntry, Manifest, PartitionEntry};
use crate::lake::writer::{day_string, split_by_day, FileRoller};
use crate::lake::Lake;
use crate::pipeline::LakeCommits;
use crate::query::{lake_session, register_lake_store, LakeTable};
use crate::warehouse::{LoadTarget, Warehouse};

/// The partition name of an unpartitioned model (its folder, and the ClickHouse
/// partition ID of a table without `PARTITION BY`).
pub const WHOLE_TABLE: &str = crate::warehouse::ddl::UNPARTITIONED;

/// Which models to run.
#[derive(Debug, Clone, Default)]
pub struct ModelsOptions {
    /// Only these models (all when empty); the models they read must already be
    /// in the lake.
    pub models: Vec<String>,
}

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
    fn new(model: &str, status: ModelStatus) -> Self {
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

/// `sluice models`: runs the models of `config` on their own, with a run id of
/// their own.
pub async fn run_models(
    config: &Config,
    base: &FsPath,
    options: &ModelsOptions,
) -> Result<Vec<ModelReport>> {
    let lake = Lake::open(&config.lake, base)?;
    let warehouse = match &config.clickhouse {
        Some(ch) => Some(Warehouse::new(ch, &lake)?),
        None => None,
    };
    let now = chrono::Utc::now();
    let run_id = format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut reports = Vec::new();
    run_after_tables(
        config,
        base,
        &lake,
        warehouse.as_ref(),
        &run_id,
        options,
        None,
        &mut reports,
    )
    .await?;
    Ok(reports)
}

/// Runs the models of `config` (nothing without a `[models]` section), pushing one
/// report per model onto `reports`. Fails with [`ModelError::Run`] when a model
/// failed, after running every model that does not depend on it; a lake or
/// ClickHouse error stops the run at once.
///
/// Models run in dependency order, up to [`MODEL_JOBS`] at a time: a model
/// starts once the models it reads are published. With `commits` (a `sluice
/// run`), the run's tables are still being extracted: a model also waits until
/// the tables it reads are committed, and is skipped when one of them failed or
/// did not run.
#[allow(clippy::too_many_arguments)]
pub async fn run_after_tables(
    config: &Config,
    base: &FsPath,
    lake: &Lake,
    warehouse: Option<&Warehouse>,
    run_id: &str,
    options: &ModelsOptions,
    commits: Option<&LakeCommits>,
    reports: &mut Vec<ModelReport>,
) -> Result<()> {
    let Some(models_config) = &config.models else {
        return Ok(());
    };
    let in_run = |table: &str| commits.is_some_and(|c| c.in_run(table));
    let runner = Runner::open(config, models_config, base, lake, warehouse, run_id).await?;
    // The tables outside the run are read as the lake has them now, each
    // manifest once; a missing one fails the models before any runs.
    let mut registered = BTreeSet::new();
    for model in &runner.project.models {
        runner
            .register_tables(model, |t| !in_run(t) && !registered.contains(t))
            .await?;
        registered.extend(model.tables.iter().map(String::as_str));
    }
    if let Some(unknown) = options
        .models
        .iter()
        .find(|m| runner.project.model(m).is_none())
    {
        return Err(Error::Config(crate::error::ConfigError::Invalid {
            table: unknown.clone(),
            field: "--model".into(),
            reason: format!("is not a model of {}", runner.project.dir.display()),
        }));
    }
    // The models to run, in dependency order; a model starts once the models
    // it reads are published and its tables committed, up to MODEL_JOBS at a
    // time. Reports keep the dependency order.
    let mut pending: Vec<(usize, &Model)> = runner
        .project
        .models
        .iter()
        .filter(|m| options.models.is_empty() || options.models.contains(&m.name))
        .enumerate()
        .collect();
    let selected: BTreeSet<String> = pending.iter().map(|(_, m)| m.name.clone()).collect();
    let mut published: BTreeSet<String> = BTreeSet::new();
    let mut failed: Vec<String> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut messages = Vec::new();
    let mut done: Vec<(usize, ModelReport)> = Vec::new();
    let mut stop: Option<Error> = None;
    let mut running = futures::stream::FuturesUnordered::new();
    let mut changes = commits.map(LakeCommits::subscribe);
    let run_one = |index: usize, model| {
        let runner = &runner;
        async move {
            let started = Instant::now();
            let outcome = runner
                .run_locked(model, &in_run)
                .instrument(info_span!("model", model = %model.name))
                .await;
            (index, model, started, outcome)
        }
    };
    loop {
        if let Some(changes) = &mut changes {
            changes.borrow_and_update();
        }
        let mut i = 0;
        while stop.is_none() && i < pending.len() && running.len() < MODEL_JOBS {
            let (index, model) = pending[i];
            let blocked = model
                .models
                .iter()
                .find(|d| failed.contains(d) || skipped.contains(d));
            if let Some(blocked) = blocked {
                warn!(model = %model.name, upstream = %blocked, "Model skipped: a model it reads was not published.");
                let why = format!("not run: {blocked} was not published");
                done.push((index, skip(model, why, &mut skipped)));
                pending.remove(i);
                continue;
            }
            let upstream_ready = model
                .models
                .iter()
                .all(|d| !selected.contains(d) || published.contains(d));
            let tables = match commits {
                Some(commits) => commits.state_of(&model.tables),
                None => Ok(true),
            };
            match tables {
                Err(table) => {
                    warn!(model = %model.name, table = %table, "Model skipped: a table it reads failed or did not run.");
                    let why = format!("not run: table {table} failed or did not run");
                    done.push((index, skip(model, why, &mut skipped)));
                    pending.remove(i);
                }
                Ok(true) if upstream_ready => {
                    pending.remove(i);
                    running.push(run_one(index, model));
                }
                Ok(_) => i += 1,
            }
        }
        if running.is_empty() && (pending.is_empty() || stop.is_some()) {
            break;
        }
        let table_committed = async {
            match &mut changes {
                Some(changes) => {
                    let _ = changes.changed().await;
                }
                None => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            Some((index, model, started, outcome)) = running.next() => match outcome {
                Ok(mut report) => {
                    report.seconds = started.elapsed().as_secs_f64();
                    info!(model = %model.name, rows = report.rows, seconds = report.seconds, "Model published.");
                    published.insert(model.name.clone());
                    done.push((index, report));
                }
                Err((Error::Model(e), checks)) => {
                    warn!(model = %model.name, error = %e, "Model failed.");
                    let mut report = ModelReport::new(&model.name, ModelStatus::Failed);
                    report.error = Some(e.to_string());
                    report.checks = checks;
                    report.seconds = started.elapsed().as_secs_f64();
                    done.push((index, report));
                    messages.push(e.to_string());
                    failed.push(model.name.clone());
                }
                // A lake or ClickHouse error: no further model starts; those
                // running finish.
                Err((other, _)) => {
                    stop.get_or_insert(other);
                }
            },
            _ = table_committed => {}
        }
    }
    done.sort_by_key(|(index, _)| *index);
    reports.extend(done.into_iter().map(|(_, report)| report));
    if let Some(e) = stop {
        return Err(e);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ModelError::Run {
            failed,
            skipped,
            messages,
        }
        .into())
    }
}

/// The report of `model`, skipped because of `why`; the models that read it are
/// skipped in turn.
fn skip(model: &Model, why: String, skipped: &mut Vec<String>) -> ModelReport {
    let mut report = ModelReport::new(&model.name, ModelStatus::Skipped);
    report.error = Some(why);
    skipped.push(model.name.clone());
    report
}

/// The session and settings shared by the models of one run.
struct Runner<'a> {
    project: Project,
    ctx: SessionContext,
    lake: &'a Lake,
    store_url: datafusion::execution::object_store::ObjectStoreUrl,
    /// Where models are loaded, when they are.
    warehouse: Option<&'a Warehouse>,
    models_config: &'a ModelsConfig,
    run_id: &'a str,
}

/// A model's failure, with the checks that ran before it.
type Failure = (Error, Vec<CheckOutcome>);

impl<'a> Runner<'a> {
    async fn open(
        config: &Config,
        models_config: &'a ModelsConfig,
        base: &FsPath,
        lake: &'a Lake,
        warehouse: Option<&'a Warehouse>,
        run_id: &'a str,
    ) -> Result<Self> {
        // One partition: a hash join builds its (unspillable) table before any row
        // reaches the (spillable) sort by day. With several partitions one
        // partition's rows filled the sort's share of the pool while another was
        // still building, and the build failed with "Resources exhausted" at the
        // demo's default scale.
        let mut session = SessionConfig::new().with_target_partitions(1);
        // Planning errors then carry the line of the offending identifier.
        session.options_mut().sql_parser.collect_spans = true;
        // Bounded memory: operators that buffer (the sort by day before writing a
        // partitioned model, joins, aggregates) spill to temporary files instead
        // of holding a whole model in memory.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(MODEL_MEMORY_BYTES)))
            .build_arc()
            .map_err(|e| Error::Query(format!("model runtime: {e}")))?;
        let ctx = lake_session(session, runtime);
        let tables: BTreeSet<String> = config.tables.iter().map(|t| t.name.clone()).collect();
        let project = Project::load(models_config, base, &tables, &ctx.state())?;
        let store_url = register_lake_store(&ctx, lake)?;
        // Models already built are registered (for --model runs), and replaced as
        // they are rebuilt; the tables, by `register_tables`.
        for model in &project.models {
            if let Some(manifest) = lake.read_manifest(&model.name).await? {
                register(
                    &ctx,
                    &model.name,
                    LakeTable::new(lake, store_url.clone(), &manifest)?,
                )?;
            }
        }
        Ok(Self {
            project,
            ctx,
            lake,
            store_url,
            warehouse,
            models_config,
            run_id,
        })
    }

    /// Runs `model` under its lake lock (the same per-table lock as the extract:
    /// one writer per lake table), after registering the tables it reads for
    /// which `in_run` is true again (their new versions, committed in this run).
    async fn run_locked(
        &self,
        model: &Model,
        in_run: &(dyn Fn(&str) -> bool + Sync),
    ) -> std::result::Result<ModelReport, Failure> {
        self.register_tables(model, in_run)
            .await
            .map_err(|e| (e, Vec::new()))?;
        let lock = crate::lake::lock::TableLock::acquire(self.lake, &model.name, self.run_id)
            .await
            .map_err(|e| (e, Vec::new()))?;
        let outcome = self.run(model).await;
        if let Err(e) = lock.release().await {
            warn!(error = %e, "Could not release the model's lock.");
        }
        outcome
    }

    /// Registers the lake tables `model` reads for which `which` is true, from
    /// their manifests as they are now. A table not in the lake is an error
    /// naming the model.
    async fn register_tables(&self, model: &Model, which: impl Fn(&str) -> bool) -> Result<()> {
        for table in model.tables.iter().filter(|t| which(t)) {
            let Some(manifest) = self.lake.read_manifest(table).await? else {
                return Err(ModelError::UnknownName {
                    model: model.name.clone(),
                    file: model.file.clone(),
                    line: line_of(&model.sql, table),
                    name: table.clone(),
                }
                .into());
            };
            register(
                &self.ctx,
                table,
                LakeTable::new(self.lake, self.store_url.clone(), &manifest)?,
            )?;
        }
        Ok(())
    }

    /// The session the checks run in: the models' tables and memory pool, and
    /// [`CHECK_PARTITIONS`] partitions, so that a check reads several of a
    /// model's files at a time (its aggregates spill; it joins nothing).
    fn checks_session(&self) -> SessionContext {
        let mut state = self.ctx.state();
        state.config_mut().options_mut().execution.target_partitions = CHECK_PARTITIONS;
        SessionContext::new_with_state(state)
    }

    /// Builds, checks and publishes one model.
    async fn run(&self, model: &Model) -> std::result::Result<ModelReport, Failure> {
        let no_checks = |e: Error| (e, Vec::new());
        let name = model.name.as_str();
        let mut report = ModelReport::new(name, ModelStatus::Published);
        let old = self.lake.read_manifest(name).await.map_err(no_checks)?;
        self.lake
            .remove_orphans(name, old.as_ref())
            .await
            .map_err(no_checks)?;

        let stage = Instant::now();
        let frame = self.plan(model, &model.sql).await.map_err(no_checks)?;
        // Validate before write: the referenced keys are read first (they are the
        // small side), then the model's rows without a match are counted and
        // dropped on their way to the files, and the row checks counted on the
        // rows kept, in the same pass.
        let schema = frame.schema().as_arrow().clone();
        let (drop, refers) = self.key_sets(model, &schema).await.map_err(no_checks)?;
        let row_checks = RowChecks::new(name, &model.settings.checks, &schema, refers, &drop)
            .map_err(|message| no_checks(check_error(model, message)))?;
        let row_checks = Arc::new(Mutex::new(row_checks));
        let partition_by = model.settings.partition_by.clone();
        let frame = match &partition_by {
            Some(column) => {
                check_partition_column(model, &schema, column).map_err(no_checks)?;
                let by = Expr::Column(Column::new_unqualified(column));
                // NULLS LAST, as the lake's day orderings are declared: a model
                // that keeps the day order of what it reads needs no sort.
                frame
                    .sort(vec![by.sort(true, false)])
                    .map_err(|e| no_checks(sql_error(model, &model.sql, &e)))?
            }
            None => frame,
        };
        let stream = frame
            .execute_stream()
            .await
            .map_err(|e| no_checks(sql_error(model, &model.sql, &e)))?;
        let dropped = Arc::new(AtomicU64::new(0));
        let stream = validate(stream, drop, Arc::clone(&dropped), Arc::clone(&row_checks));
        let stream = on_own_task(stream);

        // Write under fresh names: invisible until the manifest names them.
        let key = model.settings.key.clone().unwrap_or_default();
        let written = write_files(
            self.lake,
            name,
            partition_by.as_deref(),
            self.run_id,
            stream,
        )
        .await
        .map_err(|e| match e {
            WriteError::Rows(e) => no_checks(sql_error(model, &model.sql, &e)),
            WriteError::Partition(message) => no_checks(
                ModelError::Sql {
                    model: name.to_string(),
                    file: model.file.clone(),
                    line: None,
                    message,
                }
                .into(),
            ),
            WriteError::Lake(e) => no_checks(e),
        })?;
        report.stages.build = stage.elapsed().as_secs_f64();
        report.rows_dropped = dropped.load(Ordering::Relaxed);
        if report.rows_dropped > 0 {
            warn!(
                rows = report.rows_dropped,
                "Rows without a match dropped before writing."
            );
        }
        let mut next = Manifest::new(name, partition_by.as_deref().unwrap_or(""), &key);
        next.version = old.as_ref().map(|m| m.version).unwrap_or(0);
        next.run_id = self.run_id.to_string();
        next.set_schema(&written.schema);
        next.partitions = written.partitions;
        report.rows = next.rows();
        report.partitions = next.partitions.len();
        report.files = next.partitions.values().map(|p| p.files.len()).sum();
        report.bytes = next
            .partitions
            .values()
            .flat_map(|p| p.files.iter().map(|f| f.bytes))
            .sum();

        // Check the new rows before anyone can see them.
        let candidate = match LakeTable::new(self.lake, self.store_url.clone(), &next) {
            Ok(table) => table,
            Err(e) => {
                // The files cannot be read back as a table (e.g. a column already
                // named `<partition_by>_day`, as `SELECT *` from a lake table has).
                let new_files: Vec<&str> = next.live_files().into_iter().collect();
                self.lake
                    .delete_files(name, new_files)
                    .await
                    .map_err(no_checks)?;
                return Err(no_checks(
                    ModelError::Sql {
                        model: name.to_string(),
                        file: model.file.clone(),
                        line: None,
                        message: e.to_string(),
                    }
                    .into(),
                ));
            }
        };
        let previous = self.ctx.table_provider(name).await.ok();
        register(&self.ctx, name, candidate).map_err(no_checks)?;
        let stage = Instant::now();
        let counted = std::mem::take(&mut *row_checks.lock().expect("not poisoned"));
        let checks = run_checks(
            &self.checks_session(),
            name,
            &model.settings.checks,
            counted,
        )
        .await;
        report.stages.checks = stage.elapsed().as_secs_f64();
        let failure = match checks {
            Err(e) => Some((check_error(model, e.to_string()), Vec::new())),
            Ok(outcomes) if outcomes.iter().any(|c| !c.passed()) => {
                let failures: Vec<CheckOutcome> =
                    outcomes.iter().filter(|c| !c.passed()).cloned().collect();
                Some((
                    ModelError::CheckFailed {
                        model: name.to_string(),
                        file: model.file.clone(),
                        failures,
                    }
                    .into(),
                    outcomes,
                ))
            }
            Ok(outcomes) => {
                report.checks = outcomes;
                None
            }
        };
        if let Some(failure) = failure {
            // Not published: the old table stays, the new files go.
            let _ = self.ctx.deregister_table(name);
            if let Some(previous) = previous {
                let _ = self.ctx.register_table(name, previous);
            }
            let new_files: Vec<String> = next.live_files().into_iter().map(String::from).collect();
            self.lake
                .delete_files(name, new_files.iter().map(String::as_str))
                .await
                .map_err(no_checks)?;
            return Err(failure);
        }

        // Publish: one manifest PUT, then the old files go.
        let loads = self.warehouse.is_some()
            && self
                .models_config
                .loads_clickhouse(name, self.warehouse.is_some());
        if loads {
            let mut pending: BTreeSet<String> = next.partitions.keys().cloned().collect();
            if let Some(old) = &old {
                pending.extend(old.partitions.keys().cloned());
                pending.extend(old.pending_warehouse.iter().cloned());
            }
            if partition_by.is_none() {
                pending = [WHOLE_TABLE.to_string()].into();
            }
            next.pending_warehouse = pending;
        }
        let stage = Instant::now();
        commit(self.lake, &mut next).await.map_err(no_checks)?;
        if let Some(old) = &old {
            let live = next.live_files();
            let replaced: Vec<&str> = old
                .live_files()
                .into_iter()
                .filter(|f| !live.contains(f))
                .collect();
            self.lake
                .delete_files(name, replaced)
                .await
                .map_err(no_checks)?;
        }
        info!(
            rows = report.rows,
            partitions = report.partitions,
            version = next.version,
            "Model committed to the lake."
        );

        report.stages.commit = stage.elapsed().as_secs_f64();

        if loads {
            let stage = Instant::now();
            let warehouse = self.warehouse.expect("loads implies a warehouse");
            report.rows_loaded = self
                .load(warehouse, model, &written.schema, &next)
                .await
                .map_err(|e| (e, report.checks.clone()))?;
            next.pending_warehouse.clear();
            commit(self.lake, &mut next).await.map_err(no_checks)?;
            report.stages.warehouse = stage.elapsed().as_secs_f64();
        }
        Ok(report)
    }

    /// The keys each relationship of `model` refers to, read before the model
    /// runs (see [`KeySet`]): one per `drop_unmatched` relationship, and one per
    /// `relationships` check. A relationship given in both is read once.
    async fn key_sets(
        &self,
        model: &Model,
        schema: &Schema,
    ) -> Result<(Vec<Arc<KeySet>>, Vec<Arc<KeySet>>)> {
        let settings = &model.settings;
        let wanted = settings
            .drop_unmatched
            .iter()
            .map(|r| ("drop_unmatched", r))
            .chain(
                settings
                    .checks
                    .relationships
                    .iter()
                    .map(|r| ("relationships", r)),
            );
        let mut read: Vec<(&Relationship, Arc<KeySet>)> = Vec::new();
        for (what, r) in wanted {
            let same = |seen: &Relationship| {
                (&seen.column, &seen.to, seen.field()) == (&r.column, &r.to, r.field())
            };
            if let Some((_, keys)) = read.iter().find(|(seen, _)| same(seen)) {
                read.push((r, Arc::clone(keys)));
                continue;
            }
            let fail = |message: String| -> Error {
                ModelError::Sql {
                    model: model.name.clone(),
                    file: model.file.clone(),
                    line: None,
                    message: format!("{what} ({} → {}.{}): {message}", r.column, r.to, r.field()),
                }
                .into()
            };
            let column = schema
                .index_of(&r.column)
                .map_err(|_| fail(format!("the model has no column {:?}", r.column)))?;
            let keys = KeySet::read(&self.ctx, r, column, schema.field(column).data_type())
                .await
                .map_err(|e| fail(e.to_string()))?;
            read.push((r, Arc::new(keys)));
        }
        let mut keys: Vec<Arc<KeySet>> = read.into_iter().map(|(_, keys)| keys).collect();
        let refers = keys.split_off(settings.drop_unmatched.len());
        Ok((keys, refers))
    }

    /// Parses and plans `sql`; errors name the model's file and line.
    async fn plan(&self, model: &Model, sql: &str) -> Result<DataFrame> {
        let state = self.ctx.state();
        let dialect = state.config_options().sql_parser.dialect;
        let statement = state
            .sql_to_statement(sql, &dialect)
            .map_err(|e| sql_error(model, &model.sql, &e))?;
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| sql_error(model, &model.sql, &e))?;
        Ok(DataFrame::new(state, plan))
    }

    /// Loads the committed model into ClickHouse; returns the rows loaded.
    async fn load(
        &self,
        warehouse: &Warehouse,
        model: &Model,
        schema: &Schema,
        manifest: &Manifest,
    ) -> Result<u64> {
        let name = &model.name;
        let key = model.settings.key.clone().unwrap_or_default();
        let partition_by = model.settings.partition_by.clone();
        let grain = model
            .settings
            .clickhouse_partition
            .unwrap_or(PartitionGrain::Day);
        let target = LoadTarget::model(name, partition_by.as_deref().map(|c| (c, grain)), &key);
        warehouse.ensure_table(&target, schema).await?;
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let days: Vec<(String, PartitionEntry)> = manifest
            .pending_warehouse
            .iter()
            .map(|day| {
                let partition = if model.settings.partition_by.is_none() {
                    whole(manifest)
                } else {
                    manifest.partitions.get(day).cloned().unwrap_or_default()
                };
                (day.clone(), partition)
            })
            .collect();
        let rows: u64 = warehouse
            .load_partitions(&target, &columns, &days)
            .await?
            .iter()
            .map(|(_, rows)| rows)
            .sum();
        info!(
            rows,
            partitions = manifest.pending_warehouse.len(),
            "Model loaded into ClickHouse."
        );
        Ok(rows)
    }
}

/// Every file of a manifest as one partition.
fn whole(manifest: &Manifest) -> PartitionEntry {
    let mut all = PartitionEntry::default();
    for p in manifest.partitions.values() {
        all.rows += p.rows;
        all.files.extend(p.files.iter().cloned());
    }
    all
}

fn register(ctx: &SessionContext, name: &str, table: LakeTable) -> Result<()> {
    let _ = ctx.deregister_table(name);
    ctx.register_table(name, Arc::new(table) as Arc<dyn TableProvider>)
        .map(|_| ())
        .map_err(|e| Error::Query(e.to_string()))
}

/// A check that cannot run on this model (e.g. a column it does not have).
fn check_error(model: &Model, message: String) -> Error {
    ModelError::Sql {
        model: model.name.clone(),
        file: model.file.clone(),
        line: None,
        message: format!(
            "a check could not run (see [models.model.{}.checks]): {message}",
            model.name
        ),
    }
    .into()
}

fn check_partition_column(model: &Model, schema: &Schema, column: &str) -> Result<()> {
    let field = schema
        .field_with_name(column)
        .map_err(|_| ModelError::Sql {
            model: model.name.clone(),
            file: model.file.clone(),
            line: None,
            message: format!(
                "partition_by = {column:?} is not a column of the model ({})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    if !matches!(
        field.data_type(),
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
    ) {
        return Err(ModelError::Sql {
            model: model.name.clone(),
            file: model.file.clone(),
            line: None,
            message: format!(
                "partition_by = {column:?} is {}, not a date or timestamp",
                field.data_type()
            ),
        }
        .into());
    }
    Ok(())
}

/// A DataFusion error in a model, with the line it points at: from the error's
/// diagnostic span, the parser's `Line: N`, or the first line naming what it
/// could not find.
fn sql_error(model: &Model, sql: &str, e: &DataFusionError) -> Error {
    let message = crate::error::redact(&e.to_string());
    let line = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|s| s.start.line)
        .filter(|l| *l > 0)
        .or_else(|| line_in_message(&message))
        .or_else(|| missing_name(&message).and_then(|n| line_of(sql, &n)))
        .or_else(|| message.contains("found: EOF").then(|| last_line(sql)));
    ModelError::Sql {
        model: model.name.clone(),
        file: model.file.clone(),
        line,
        message,
    }
    .into()
}

/// The name in "No field named x", "table '…x' not found" or "Function 'f'".
fn missing_name(message: &str) -> Option<String> {
    let clean = |s: &str| {
        s.trim_matches(|c| c == '"' || c == '\'' || c == '`')
            .rsplit('.')
            .next()
            .unwrap_or("")
            .trim_matches('"')
            .to_string()
    };
    if let Some(rest) = message.split("No field named ").nth(1) {
        let name: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ',')
            .collect();
        return Some(clean(name.trim_end_matches('.')));
    }
    for opening in ["table '", "Function '"] {
        if let Some(rest) = message.split(opening).nth(1) {
            return rest.split('\'').next().map(clean);
        }
    }
    None
}

/// The driver's commit, by the run that `next` names.
async fn commit(lake: &Lake, next: &mut Manifest) -> Result<()> {
    let run_id = next.run_id.clone();
    crate::pipeline::table::commit(lake, &run_id, next).await
}

/// What [`write_files`] wrote.
struct Written {
    schema: SchemaRef,
    partitions: BTreeMap<String, PartitionEntry>,
}

enum WriteError {
    /// Computing the rows failed.
    Rows(DataFusionError),
    /// A row has no partition day.
    Partition(String),
    Lake(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Lake(e)
    }
}

/// Validate before write: the rows of `stream` with a match in every key set
/// of `drop` (the others are left out and counted in `dropped`), with the row
/// checks counted on them.
fn validate(
    stream: SendableRecordBatchStream,
    drop: Vec<Arc<KeySet>>,
    dropped: Arc<AtomicU64>,
    checks: Arc<Mutex<RowChecks>>,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let batches = stream.map(move |batch| {
        let mut batch = batch?;
        if let Some((first, rest)) = drop.split_first() {
            let mut matched = first.matches(&batch)?;
            for keys in rest {
                matched = arrow::compute::and(&matched, &keys.matches(&batch)?)?;
            }
            let rows = batch.num_rows() as u64;
            batch = arrow::compute::filter_record_batch(&batch, &matched)?;
            dropped.fetch_add(rows - batch.num_rows() as u64, Ordering::Relaxed);
        }
        checks.lock().expect("not poisoned").observe(&batch)?;
        Ok(batch)
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// Polls `stream` on a task of its own, up to two batches ahead of the reader:
/// DataFusion computes the next rows on one core while the writer encodes and
/// compresses the last ones on the other (with one partition per model, the
/// two would otherwise take turns on one core).
fn on_own_task(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let mut builder = RecordBatchReceiverStream::builder(stream.schema(), 2);
    let tx = builder.tx();
    builder.spawn(async move {
        let mut stream = stream;
        while let Some(batch) = stream.next().await {
            if tx.send(batch).await.is_err() {
                break; // the writer stopped (an error): stop computing
            }
        }
        Ok(())
    });
    builder.build()
}

/// Files finished (last row group encoded, uploaded) concurrently by [`write_files`].
const FILES_CLOSING: usize = 4;

/// The result of a finished file's task (`Some`: the set was not empty).
fn joined<T>(done: Option<std::result::Result<Result<T>, tokio::task::JoinError>>) -> Result<T> {
    match done.expect("a task was waiting") {
        Ok(result) => result,
        Err(e) => Err(Error::lake(format!("writing a model file: {e}"))),
    }
}

/// Writes a stream as the files of table `name`: one folder per day of
/// `partition_by` (rows must arrive ordered by it), or the single folder `all`.
async fn write_files(
    lake: &Lake,
    name: &str,
    partition_by: Option<&str>,
    run_id: &str,
    mut stream: SendableRecordBatchStream,
) -> std::result::Result<Written, WriteError> {
    let schema = stream.schema();
    let column = match partition_by {
        Some(c) => Some(
            schema
                .index_of(c)
                .map_err(|e| WriteError::Partition(e.to_string()))?,
        ),
        None => None,
    };
    let mut partitions = BTreeMap::new();
    let mut open: Option<(String, FileRoller)> = None;
    let mut seq = 0usize;
    let roller = |folder: &str, seq: usize| {
        let rel = match partition_by {
            Some(c) => format!("{c}={folder}"),
            None => folder.to_string(),
        };
        let dir = lake.table_path(name).join(rel.as_str());
        FileRoller::new(lake, dir, rel, &format!("{run_id}-{seq}"), schema.clone())
    };
    // A finished day's last row group is encoded and its file uploaded on a task
    // of its own, a few at a time, while the next days are written: for a model
    // of 366 days the uploads no longer wait for one another.
    let mut closing: JoinSet<Result<(String, Vec<FileEntry>)>> = JoinSet::new();
    let add = |partitions: &mut BTreeMap<String, PartitionEntry>,
               (day, files): (String, Vec<FileEntry>)| {
        let entry: &mut PartitionEntry = partitions.entry(day).or_default();
        entry.rows += files.iter().map(|f| f.rows).sum::<u64>();
        entry.files.extend(files);
    };
    while let Some(batch) = stream.next().await {
        let batch: RecordBatch = batch.map_err(WriteError::Rows)?;
        let slices = match column {
            Some(index) => split_by_day(&batch, index, partition_by.unwrap_or_default())
                .map_err(WriteError::Partition)?
                .into_iter()
                .map(|s| (day_string(s.day), s.batch))
                .collect(),
            None => vec![(WHOLE_TABLE.to_string(), batch)],
        };
        for (day, slice) in slices {
            if open.as_ref().map(|(d, _)| d) != Some(&day) {
                if let Some((d, r)) = open.take() {
                    while closing.len() >= FILES_CLOSING {
                        add(&mut partitions, joined(closing.join_next().await)?);
                    }
                    closing.spawn(async move { Ok((d, r.finish().await?)) });
                }
                open = Some((day.clone(), roller(&day, seq)));
                seq += 1;
            }
            let (_, r) = open.as_mut().expect("opened above");
            r.write(&slice).await?;
        }
    }
    if let Some((d, r)) = open.take() {
        closing.spawn(async move { Ok((d, r.finish().await?)) });
    }
    while let Some(done) = closing.join_next().await {
        add(&mut partitions, joined(Some(done))?);
    }
    partitions.retain(|_, p: &mut PartitionEntry| p.rows > 0);
    Ok(Written { schema, partitions })
}

/// Writes `batches` as the committed lake table `name` (partitioned by the day of
/// `partition_by` when given), replacing what the table held. For fixtures and
/// tools that put data in the lake without a source.
pub async fn write_table(
    lake: &Lake,
    name: &str,
    partition_by: Option<&str>,
    key: &[String],
    batches: Vec<RecordBatch>,
) -> Result<Manifest> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| Error::lake(format!("{name}: no batches to write")))?;
    let ctx = SessionContext::new();
    let frame = ctx
        .read_batches(batches)
        .map_err(|e| Error::Query(e.to_string()))?;
    let frame = match partition_by {
        Some(c) => frame
            .sort(vec![
                Expr::Column(Column::new_unqualified(c)).sort(true, true)
            ])
            .map_err(|e| Error::Query(e.to_string()))?,
        None => frame,
    };
    let stream = frame
        .execute_stream()
        .await
        .map_err(|e| Error::Query(e.to_string()))?;
    let old = lake.read_manifest(name).await?;
    let run_id = format!(
        "fixture-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let written = write_files(lake, name, partition_by, &run_id, stream)
        .await
        .map_err(|e| match e {
            WriteError::Rows(e) => Error::Query(e.to_string()),
            WriteError::Partition(m) => Error::Query(m),
            WriteError::Lake(e) => e,
        })?;
    let mut next = Manifest::new(name, partition_by.unwrap_or(""), key);
    next.version = old.as_ref().map(|m| m.version).unwrap_or(0);
    next.run_id = run_id;
    next.set_schema(&schema);
    next.partitions = written.partitions;
    commit(lake, &mut next).await?;
    if let Some(old) = old {
        lake.delete_files(name, old.live_files()).await?;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_are_found_in_messages() {
        assert_eq!(
            missing_name("Schema error: No field named amout. Valid fields are t.amount."),
            Some("amout".into())
        );
        assert_eq!(
            missing_name("Error during planning: table 'datafusion.public.userz' not found"),
            Some("userz".into())
        );
    }
}
