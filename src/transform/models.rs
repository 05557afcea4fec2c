//! Running models: each one is planned by DataFusion over the lake's committed
//! tables, written as Parquet under fresh names, checked, and only then published
//! by replacing its `_manifest.json` (the same commit point as the extracted
//! tables, so `sluice query` and later models read it like any table). ClickHouse
//! is loaded from the committed files afterwards, partition by partition with
//! `REPLACE PARTITION` (an unpartitioned model is the single partition `all`).
//!
//! A model whose SQL or checks fail is not published; every model that reads it,
//! directly or not, is skipped; models that do not depend on it still run.

use std::collections::BTreeSet;
use std::path::Path as FsPath;
use std::time::Instant;

/// Models run at the same time when none reads another (see
/// [`run_after_tables`]): one may compute while the other writes, checks or
/// loads ClickHouse.
pub(super) const MODEL_JOBS: usize = 2;

use futures::StreamExt;
use tracing::{info, info_span, warn, Instrument};

use super::project::Model;
use super::runner::Runner;
use super::ModelError;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::pipeline::LakeCommits;
use crate::warehouse::Warehouse;

pub use super::materialize::WHOLE_TABLE;
pub use super::report::{ModelReport, ModelStageSeconds, ModelStatus};

/// Which models to run.
#[derive(Debug, Clone, Default)]
pub struct ModelsOptions {
    /// Only these models (all when empty); the models they read must already be
    /// in the lake.
    pub models: Vec<String>,
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
