//! One table, start to end, whatever its capture mode (watermark, backfill,
//! snapshot, snapshot diff, change stream): [`drive`] takes the table lock, reads
//! the committed state, runs the mode's [`Capture`], then
//!
//! 1. **commit** ([`commit_files`]): one conditional manifest PUT makes the new
//!    files (and, for modes that keep it with the data, the new position) visible
//!    and records the touched days as `pending_warehouse`; the files replaced
//!    more than `keep_versions_days` ago are deleted after it (time travel reads
//!    the ones kept);
//! 2. **load** ([`load_and_finish`]): the pending days go into ClickHouse,
//!    `days_per_load` at a time, days older than `retention_days` skipped with a
//!    warning, a current-state twin (`<table>_current`) copied partition by
//!    partition after its change table; a rebuilt lake table is dropped and
//!    reloaded whole;
//! 3. **final commit**: no pending days, and whatever the mode moves only once
//!    ClickHouse has the rows (the watermark).
//!
//! The crash points live here once, so every mode has the same ones:
//! `lake.before_commit`, `lake.after_commit`, `lake.after_delete`,
//! `run.before_final_commit`, `run.after_final_commit` (and the warehouse's own
//! `warehouse.after_stage_insert`, `warehouse.after_replace`). A crash before a
//! commit leaves files no manifest names (deleted by the next run); after it, the
//! pending days, which the next run loads again (`REPLACE PARTITION`: no
//! duplicates).

use std::collections::BTreeSet;
use std::time::Instant;

use arrow::datatypes::Schema;
use object_store::ObjectStoreExt;
use tracing::{debug, info, warn};

use super::report::TableReport;
use crate::capture::{
    Apply, Capture, CaptureContext, Committed, LakeTable, Position, SchemaUpdate, TableChange,
};
use crate::config::{Config, TableConfig};
use crate::error::Result;
use crate::fault;
use crate::lake::lock::TableLock;
use crate::lake::manifest::{Manifest, PartitionEntry};
use crate::lake::writer::parse_day;
use crate::lake::Lake;
use crate::progress::{Stage, TableProgress};
use crate::warehouse::{Warehouse, WarehouseTables};

/// What the driver of one table's run needs.
pub struct TableRun<'a> {
    pub config: &'a Config,
    pub table: &'a TableConfig,
    pub lake: &'a Lake,
    pub warehouse: Option<&'a Warehouse>,
    pub run_id: &'a str,
    pub progress: &'a TableProgress,
    /// Called once the lake shows the table's new version (before ClickHouse
    /// has it): the models that read the table may start.
    pub on_committed: &'a (dyn Fn() + Send + Sync),
}

/// Runs one table through `capture`: lock, committed state, capture, commit,
/// ClickHouse load, final commit. The lock is released however it ends.
pub async fn drive<C: Capture>(run: &TableRun<'_>, capture: &C) -> Result<TableReport> {
    let lock = TableLock::acquire(run.lake, &run.table.name, run.run_id).await?;
    let outcome = drive_locked(run, capture).await;
    // A failed release leaves a lock that expires (or is seen as dead) later.
    if let Err(e) = lock.release().await {
        warn!(error = %e, "Could not release the table lock.");
    }
    outcome
}

async fn drive_locked<C: Capture>(run: &TableRun<'_>, capture: &C) -> Result<TableReport> {
    let started = Instant::now();
    let lake = run.lake;
    let name = run.table.name.as_str();
    let tables = capture.lake_tables();
    let mut manifests = Vec::with_capacity(tables.len());
    for table in &tables {
        let manifest = match lake.read_manifest(&table.name).await? {
            Some(m) => m,
            None => Manifest::new(&table.name, &table.partition_column, &table.key),
        };
        manifests.push(manifest);
    }
    let committed = Committed { manifests };
    for (table, manifest) in tables.iter().zip(&committed.manifests) {
        remove_orphans(lake, table, manifest).await?;
    }
    let ctx = CaptureContext {
        config: run.config,
        lake,
        run_id: run.run_id,
        progress: run.progress,
    };
    let outcome = capture.capture(&ctx, &committed).await?;
    if outcome.changes.len() != tables.len() {
        return Err(crate::error::Error::capture(
            name,
            format!(
                "the capture returned {} table change(s) for {} lake table(s) (a bug in sluice); nothing was committed",
                outcome.changes.len(),
                tables.len()
            ),
        ));
    }
    let mut report = TableReport {
        table: name.to_string(),
        rows_read: outcome.counts.rows_read,
        rows_skipped: outcome.counts.rows_skipped,
        rows_changed: outcome.counts.rows_changed,
        rows_replaced: outcome.counts.rows_replaced,
        rows_deleted: outcome.counts.rows_deleted,
        watermark_before: outcome.position_before.clone(),
        watermark_after: outcome.position_after.clone(),
        warnings: outcome.warnings.clone(),
        ..Default::default()
    };
    report.stages.extract = outcome.counts.extract_seconds;
    report.stages.merge = outcome.counts.merge_seconds;
    for change in &outcome.changes {
        report.files_written += change.apply.files().count();
        report.bytes_written += change.apply.files().map(|f| f.bytes).sum::<u64>();
    }

    // Commit 1, table by table in the mode's order: the lake shows the new files.
    let stage = Instant::now();
    let has_warehouse = run.warehouse.is_some();
    let last = tables.len() - 1;
    let mut next_manifests = Vec::with_capacity(tables.len());
    for (i, (manifest, change)) in committed.manifests.iter().zip(&outcome.changes).enumerate() {
        let (mut next, touched) = apply(manifest, change, has_warehouse);
        if i == last {
            if outcome.rebuild_warehouse && has_warehouse {
                next.warehouse_rebuild = true;
            }
            match &outcome.position {
                Position::Keep => {}
                // With ClickHouse the watermark moves only once it has the rows.
                Position::Watermark { .. } if has_warehouse => {}
                Position::Watermark { watermark, seen } => {
                    next.watermark = *watermark;
                    next.seen_rows = seen.clone();
                    next.boundary_keys.clear();
                }
                Position::Stream(position) => next.change_stream = Some(position.clone()),
            }
            report.partitions_written = touched.iter().cloned().collect();
        }
        if next != *manifest {
            commit_files(lake, run.run_id, &mut next).await?;
            info!(table = %next.table, version = next.version, partitions = touched.len(), "Lake committed.");
        } else if i == last {
            info!("Nothing changed.");
        }
        next_manifests.push(next);
    }
    report.stages.commit = stage.elapsed().as_secs_f64();
    (run.on_committed)();

    // Load the pending days, then commit 2 (the watermark moves).
    let mut next = next_manifests.pop().expect("a capture writes a table");
    if let Some(warehouse) = run.warehouse {
        let schema = outcome.schema.clone();
        let position = outcome.position.clone();
        load_and_finish(
            lake,
            warehouse,
            run.run_id,
            &mut next,
            &capture.warehouse_tables(),
            &schema,
            outcome.today,
            Some(run.progress),
            &mut report,
            move |next| {
                if let Position::Watermark { watermark, seen } = position {
                    next.watermark = watermark;
                    next.seen_rows = seen;
                    next.boundary_keys.clear();
                }
            },
        )
        .await?;
    }
    report.lake_rows = next.rows();
    report.seconds = started.elapsed().as_secs_f64();
    for warning in &report.warnings {
        warn!(warning = %warning, "Table warning.");
    }
    info!(
        rows_read = report.rows_read,
        rows_changed = report.rows_changed,
        rows_loaded = report.rows_loaded,
        seconds = report.seconds,
        "Table done."
    );
    Ok(report)
}

/// `committed` with `change` applied: the next manifest (same version: the
/// commit counts it up) and the days that got files.
fn apply(
    committed: &Manifest,
    change: &TableChange,
    has_warehouse: bool,
) -> (Manifest, BTreeSet<String>) {
    let mut next = committed.clone();
    let mut touched = BTreeSet::new();
    let entry = |files: &[crate::lake::manifest::FileEntry]| PartitionEntry {
        rows: files.iter().map(|f| f.rows).sum(),
        files: files.to_vec(),
        key_print: None,
    };
    match &change.apply {
        Apply::Append(days) => {
            for (day, files) in days.iter().filter(|(_, f)| !f.is_empty()) {
                let partition = next.partitions.entry(day.clone()).or_default();
                partition.rows += files.iter().map(|f| f.rows).sum::<u64>();
                partition.files.extend(files.iter().cloned());
                partition.key_print = None;
                touched.insert(day.clone());
            }
        }
        Apply::ReplaceDays { days, drop_days } => {
            for (day, files) in days {
                next.partitions.insert(day.clone(), entry(files));
                touched.insert(day.clone());
            }
            for day in drop_days {
                next.partitions.remove(day);
                next.pending_warehouse.remove(day);
            }
        }
        Apply::ReplaceTable(days) => {
            next.partitions = days
                .iter()
                .map(|(day, files)| (day.clone(), entry(files)))
                .collect();
            touched.extend(days.keys().cloned());
            next.pending_warehouse.clear();
            next.watermark = None;
            next.boundary_keys.clear();
            next.seen_rows.clear();
        }
    }
    for (day, print) in &change.key_prints {
        if let Some(partition) = next.partitions.get_mut(day) {
            partition.key_print = Some(*print);
        }
    }
    match &change.schema {
        SchemaUpdate::Record(schema) => next.record_schema(schema),
        SchemaUpdate::Set(schema) => next.set_schema(schema),
        SchemaUpdate::Keep => {}
    }
    if change.load && has_warehouse {
        next.pending_warehouse.extend(touched.iter().cloned());
    }
    (next, touched)
}

/// Deletes what a crashed run left behind: Parquet files in the table folder that
/// the manifest does not list, and the table's staging folder.
async fn remove_orphans(lake: &Lake, table: &LakeTable, manifest: &Manifest) -> Result<()> {
    lake.remove_orphans(&table.name, Some(manifest)).await?;
    let staging = format!("_sluice/staging/{}", table.name);
    for (path, _) in lake.list(&staging).await? {
        lake.store()
            .delete(&lake.path(&format!("{staging}/{path}")))
            .await?;
    }
    Ok(())
}

/// Replaces the manifest with `next`, one version up, made by `run_id`. The PUT
/// is conditional on the version this process read (see `lake/mod.rs`).
pub async fn commit(lake: &Lake, run_id: &str, next: &mut Manifest) -> Result<()> {
    next.version += 1;
    next.run_id = run_id.to_string();
    next.committed_at = chrono::Utc::now().to_rfc3339();
    lake.write_manifest(next).await
}

/// Commit 1: the lake shows `next`'s files; then the files that commits
/// removed more than `keep_versions_days` ago are deleted (at once with 0).
pub async fn commit_files(lake: &Lake, run_id: &str, next: &mut Manifest) -> Result<()> {
    fault::point("lake.before_commit");
    commit(lake, run_id, next).await?;
    fault::point("lake.after_commit");
    lake.vacuum(&next.table).await?;
    fault::point("lake.after_delete");
    Ok(())
}

/// Step 2 and 3: loads the pending days of `next` into ClickHouse, then commits
/// `next` with no pending days and `finish` applied (what moves once ClickHouse
/// has the rows). `today` is the day `retention_days` counts back from.
#[allow(clippy::too_many_arguments)]
pub async fn load_and_finish(
    lake: &Lake,
    warehouse: &Warehouse,
    run_id: &str,
    next: &mut Manifest,
    tables: &WarehouseTables,
    schema: &Schema,
    today: i32,
    progress: Option<&TableProgress>,
    report: &mut TableReport,
    finish: impl FnOnce(&mut Manifest),
) -> Result<()> {
    let before = next.clone();
    if next.warehouse_rebuild || !next.pending_warehouse.is_empty() {
        let stage = Instant::now();
        load(warehouse, next, tables, schema, today, progress, report).await?;
        report.stages.warehouse += stage.elapsed().as_secs_f64();
    }
    next.pending_warehouse.clear();
    next.warehouse_rebuild = false;
    finish(next);
    if *next == before {
        return Ok(());
    }
    let stage = Instant::now();
    fault::point("run.before_final_commit");
    commit(lake, run_id, next).await?;
    fault::point("run.after_final_commit");
    report.stages.commit += stage.elapsed().as_secs_f64();
    Ok(())
}

/// Loads the pending days (all days after a rebuild) into the warehouse tables.
async fn load(
    warehouse: &Warehouse,
    next: &mut Manifest,
    tables: &WarehouseTables,
    schema: &Schema,
    today: i32,
    progress: Option<&TableProgress>,
    report: &mut TableReport,
) -> Result<()> {
    let target = &tables.target;
    if next.warehouse_rebuild {
        warehouse.drop_table(&target.name).await?;
        if let Some(current) = &tables.current {
            warehouse.drop_table(&current.name).await?;
        }
        // Every day of the rebuilt lake goes in again.
        next.pending_warehouse = next.partitions.keys().cloned().collect();
    }
    warehouse.ensure_table(target, schema).await?;
    if let Some(current) = &tables.current {
        warehouse.ensure_table(current, schema).await?;
    }
    let oldest_kept = target.retention_days.map(|days| today - days as i32);
    let mut days = Vec::with_capacity(next.pending_warehouse.len());
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
    if let Some(progress) = progress {
        progress.stage(Stage::Load, Some(days.len() as u64));
    }
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let loaded = warehouse
        .load_partitions_with(target, &columns, &days, |day| {
            if let Some(progress) = progress {
                progress.partition_loaded(day)
            }
        })
        .await?;
    for (day, rows) in loaded {
        if let Some(current) = &tables.current {
            warehouse
                .copy_partition(&current.name, &target.name, &day, rows)
                .await?;
        }
        debug!(partition = %day, rows, "Partition loaded.");
        report.partitions_loaded.push(day);
        report.rows_loaded += rows;
    }
    info!(
        partitions = report.partitions_loaded.len(),
        rows = report.rows_loaded,
        "Loaded into ClickHouse."
    );
    Ok(())
}
