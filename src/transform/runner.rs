//! One model at a time: the DataFusion session over the lake shared by a run's
//! models, then for each model plan → validate and write → checks → commit →
//! ClickHouse load.

use std::collections::BTreeSet;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::datatypes::Schema;
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::dataframe::DataFrame;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{SessionConfig, SessionContext};
use tracing::{info, warn};

use super::checks::{run_checks, CheckOutcome, RowChecks};
use super::config::{ModelsConfig, Relationship};
use super::diagnostics::{check_error, check_partition_column, sql_error};
use super::keys::KeySet;
use super::materialize::WHOLE_TABLE;
use super::materialize::{commit, on_own_task, validate, write_files, WriteError};
use super::project::{line_of, Model, Project};
use super::report::{ModelReport, ModelStatus};
use super::ModelError;
use crate::config::{Config, PartitionGrain};
use crate::error::{Error, Result};
use crate::lake::manifest::{Manifest, PartitionEntry};
use crate::lake::Lake;
use crate::query::{lake_session, register_lake_store, LakeTable};
use crate::warehouse::{LoadTarget, Warehouse};

/// The session and settings shared by the models of one run.
/// Memory DataFusion may use for buffering operators while running models; beyond
/// it, sorts and aggregates spill to disk.
const MODEL_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// Partitions of the checks' queries (see [`Runner::checks_session`]).
const CHECK_PARTITIONS: usize = 4;

pub(super) struct Runner<'a> {
    pub(super) project: Project,
    pub(super) ctx: SessionContext,
    pub(super) lake: &'a Lake,
    pub(super) store_url: datafusion::execution::object_store::ObjectStoreUrl,
    /// Where models are loaded, when they are.
    pub(super) warehouse: Option<&'a Warehouse>,
    pub(super) models_config: &'a ModelsConfig,
    pub(super) run_id: &'a str,
}

/// A model's failure, with the checks that ran before it.
pub(super) type Failure = (Error, Vec<CheckOutcome>);

impl<'a> Runner<'a> {
    pub(super) async fn open(
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
    pub(super) async fn run_locked(
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
    pub(super) async fn register_tables(
        &self,
        model: &Model,
        which: impl Fn(&str) -> bool,
    ) -> Result<()> {
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
    pub(super) async fn run(&self, model: &Model) -> std::result::Result<ModelReport, Failure> {
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

        // Publish: one Delta commit; the old files stay readable as the
        // previous version until `keep_versions_days`.
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
        // The replaced files stay for time travel until `keep_versions_days`.
        self.lake.vacuum(name).await.map_err(no_checks)?;
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
