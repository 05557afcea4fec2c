//! The pipeline's state as an operator handles it: what each table has committed
//! (`sluice state show`), starting a table over (`sluice state reset`, `sluice run
//! --full-refresh`), and what the next run would do (`sluice run --dry-run`).
//!
//! Everything here reads the lake's manifests; only [`reset`] writes, under the
//! table's lock.

use std::path::Path as FsPath;

use object_store::ObjectStoreExt;

use crate::capture::backfill::{backfill_query, check_tables, Backfill};
use crate::capture::cursor::{extract_query, read_from};
use crate::capture::snapshot::{CURRENT_SUFFIX, SNAPSHOT_DATE_ENV};
use crate::config::{CaptureConfig, CaptureMode, Config, TableConfig};
use crate::error::{register_url_secret, Error, Result};
use crate::lake::lock::{TableLock, LOCK_FILE};
use crate::lake::manifest::Manifest;
use crate::lake::{Lake, DELTA_LOG};
use crate::report::{bytes_text, days_text};
use crate::source::sql::Dialect;

/// The lake tables one configured table writes: itself, and for `snapshot_diff`
/// its `<table>_current` state table.
pub fn lake_tables(table: &TableConfig) -> Vec<String> {
    let mut names = vec![table.name.clone()];
    if table.mode() == CaptureMode::SnapshotDiff {
        names.push(format!("{}{CURRENT_SUFFIX}", table.name));
    }
    names
}

fn mode_text(table: &TableConfig) -> String {
    match &table.capture {
        CaptureConfig::Watermark(w) => format!("watermark on {}", w.cursor),
        CaptureConfig::Snapshot(_) => "snapshot".into(),
        CaptureConfig::SnapshotDiff(_) => "snapshot_diff".into(),
        CaptureConfig::ChangeStream(_) => "change_stream".into(),
    }
}

/// Who holds the table's lock, if anyone (as the lock file says).
async fn lock_holder(lake: &Lake, table: &str) -> Result<Option<String>> {
    let path = lake.table_path(table).join(LOCK_FILE);
    match lake.store().get(&path).await {
        Ok(found) => {
            let bytes = found.bytes().await?;
            let lock: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let field = |name: &str| {
                lock.get(name)
                    .map(|v| {
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .unwrap_or_else(|| "?".into())
            };
            Ok(Some(format!(
                "run {} (process {} on {}, expires {})",
                field("run_id"),
                field("pid"),
                field("host"),
                field("expires_at")
            )))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::lake(format!("reading lock {path}: {e}"))),
    }
}

/// The summary of one lake table's manifest.
pub fn describe_manifest(m: &Manifest) -> String {
    let days: Vec<String> = m.partitions.keys().cloned().collect();
    let files: usize = m.partitions.values().map(|p| p.files.len()).sum();
    let bytes: u64 = m
        .partitions
        .values()
        .flat_map(|p| p.files.iter().map(|f| f.bytes))
        .sum();
    let mut out = format!(
        "  manifest version {}, schema version {} ({} columns), committed {} by run {}\n",
        m.version,
        m.schema_version,
        m.schema.len(),
        if m.committed_at.is_empty() {
            "-"
        } else {
            m.committed_at.as_str()
        },
        if m.run_id.is_empty() {
            "-"
        } else {
            m.run_id.as_str()
        }
    );
    out.push_str(&format!(
        "  partitions: {} ({}), {} rows in {} files, {}\n",
        days.len(),
        match days.as_slice() {
            [] => "none".to_string(),
            [one] => one.clone(),
            [first, .., last] => format!("{first} … {last}"),
        },
        m.rows(),
        files,
        bytes_text(bytes)
    ));
    if let Some(p) = &m.change_stream {
        out.push_str(&format!("  change stream: {}\n", p.describe()));
    } else if let Some(w) = &m.watermark {
        out.push_str(&format!(
            "  watermark: {w} ({} row(s) at or near it remembered, read again next run)\n",
            m.seen_rows.len() + m.boundary_keys.len()
        ));
    } else {
        out.push_str("  watermark: none (the next run reads everything)\n");
    }
    let pending: Vec<String> = m.pending_warehouse.iter().cloned().collect();
    out.push_str(&format!(
        "  pending ClickHouse loads: {}\n",
        days_text(&pending)
    ));
    if m.warehouse_rebuild {
        out.push_str("  the ClickHouse table is dropped and reloaded by the next run\n");
    }
    out
}

/// `sluice state show`: every configured table's committed state.
pub async fn show(config: &Config, lake: &Lake) -> Result<String> {
    let mut out = String::new();
    for table in &config.tables {
        for name in lake_tables(table) {
            match lake.read_manifest(&name).await? {
                None => out.push_str(&format!("{name}: never committed\n")),
                Some(m) => {
                    out.push_str(&format!("{name} ({})\n", mode_text(table)));
                    out.push_str(&describe_manifest(&m));
                }
            }
            if let Some(holder) = lock_holder(lake, &name).await? {
                out.push_str(&format!("  locked by {holder}\n"));
            }
        }
    }
    Ok(out)
}

/// What a reset of one table removes.
#[derive(Debug, Clone, Default)]
pub struct ResetPlan {
    pub table: String,
    /// Lake tables whose manifest exists.
    pub committed: Vec<String>,
    pub rows: u64,
    /// Objects under the tables' folders (data files, manifests).
    pub objects: usize,
    pub bytes: u64,
}

impl std::fmt::Display for ResetPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table {}: {} row(s) committed, {} object(s) ({}) in the lake",
            self.table,
            self.rows,
            self.objects,
            bytes_text(self.bytes)
        )
    }
}

fn table_config<'a>(config: &'a Config, table: &str) -> Result<&'a TableConfig> {
    config.table(table).ok_or_else(|| {
        Error::Config(crate::error::ConfigError::Invalid {
            table: table.to_string(),
            field: "--table".into(),
            reason: "is not a table of this config".into(),
        })
    })
}

/// What [`reset`] of `table` would remove; reads only.
pub async fn reset_plan(config: &Config, lake: &Lake, table: &str) -> Result<ResetPlan> {
    let t = table_config(config, table)?;
    let mut plan = ResetPlan {
        table: table.to_string(),
        ..Default::default()
    };
    for name in lake_tables(t) {
        if let Some(m) = lake.read_manifest(&name).await? {
            plan.rows += m.rows();
            plan.committed.push(name.clone());
        }
        for (path, size) in lake.list(&name).await? {
            if path != LOCK_FILE {
                plan.objects += 1;
                plan.bytes += size;
            }
        }
    }
    Ok(plan)
}

/// Starts `table` over: under its lock, its manifest is emptied and every data
/// file deleted, so the next run reads the source from the beginning.
///
/// For a watermark table the manifest is not deleted but replaced by an empty one
/// (the next version, with the schema history kept) marked `warehouse_rebuild`
/// when ClickHouse is configured: the next run then drops the ClickHouse table and
/// loads every day again, so days gone from the source do not linger there. The
/// manifest goes first, then the files: a crash in between leaves orphans that the
/// next run deletes, never a manifest naming missing files.
///
/// Snapshot tables lose their manifests (the table and its `_current` state) and
/// their document schema, which the next run infers again.
/// Converts every lake table of `config` (its tables, their `_current` twins,
/// its models) still in the manifest format into a Delta table, each under its
/// table's lock, without reading a source; returns the tables converted.
pub async fn upgrade(
    config: &Config,
    base: &std::path::Path,
    lake: &Lake,
    run_id: &str,
) -> Result<Vec<String>> {
    let mut converted = Vec::new();
    let mut groups: Vec<(String, Vec<String>)> = config
        .tables
        .iter()
        .map(|t| (t.name.clone(), lake_tables(t)))
        .collect();
    for model in crate::config::models::model_names(config, base)? {
        groups.push((model.clone(), vec![model]));
    }
    for (lock_name, names) in groups {
        let lock = TableLock::acquire(lake, &lock_name, run_id).await?;
        let mut outcome = Ok(());
        for name in &names {
            match lake.upgrade(name).await {
                Ok(true) => converted.push(name.clone()),
                Ok(false) => {}
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = lock.release().await {
            tracing::warn!(table = %lock_name, error = %e, "Could not release the table lock.");
        }
        outcome?;
    }
    Ok(converted)
}

pub async fn reset(config: &Config, lake: &Lake, table: &str, run_id: &str) -> Result<ResetPlan> {
    let t = table_config(config, table)?;
    let lock = TableLock::acquire(lake, table, run_id).await?;
    let outcome = reset_locked(config, lake, t).await;
    if let Err(e) = lock.release().await {
        tracing::warn!(table, error = %e, "Could not release the table lock.");
    }
    let plan = outcome?;
    tracing::info!(
        table,
        rows = plan.rows,
        objects = plan.objects,
        "Table reset."
    );
    Ok(plan)
}

async fn reset_locked(config: &Config, lake: &Lake, t: &TableConfig) -> Result<ResetPlan> {
    let plan = reset_plan(config, lake, &t.name).await?;
    for name in lake_tables(t) {
        let old = lake.read_manifest(&name).await?;
        match (&t.capture, old) {
            (CaptureConfig::Watermark(w), Some(old)) => {
                let mut fresh = Manifest::new(&name, &w.partition_by, &t.key);
                fresh.version = old.version + 1;
                fresh.run_id = "reset".into();
                fresh.committed_at = chrono::Utc::now().to_rfc3339();
                fresh.schema_version = old.schema_version;
                fresh.schema_history = old.schema_history;
                fresh.warehouse_rebuild = config.clickhouse.is_some();
                lake.write_manifest(&fresh).await?;
            }
            (_, Some(_)) => lake.delete_manifest(&name).await?,
            (_, None) => {}
        }
        let files: Vec<String> = lake
            .list(&name)
            .await?
            .into_iter()
            .map(|(path, _)| path)
            .filter(|p| p != LOCK_FILE && !p.starts_with(&format!("{DELTA_LOG}/")))
            .collect();
        lake.delete_files(&name, files.iter().map(String::as_str))
            .await?;
    }
    if t.mode() != CaptureMode::Watermark {
        let schema = lake.path(&format!("_sluice/mongo/{}/schema.json", t.name));
        match lake.store().delete(&schema).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::lake(format!("deleting {schema}: {e}"))),
        }
    }
    let staging = format!("_sluice/staging/{}", t.name);
    for (path, _) in lake.list(&staging).await? {
        lake.store()
            .delete(&lake.path(&format!("{staging}/{path}")))
            .await?;
    }
    Ok(plan)
}

/// `sluice run --dry-run`: per table, the query the next run would send and the
/// partitions that exist now. Reads the manifests and, for a `source_table`, the
/// source's catalog (to print the exact typed query); writes nothing, takes no
/// lock, does not contact ClickHouse.
///
/// With a `backfill`, the plan is the backfill's: its query over the cursor range,
/// and the days its rows fall on, which it reads from the source to count them.
///
/// A table whose catalog cannot be read is reported in the text and its error
/// returned after the other tables, as the second element.
pub async fn dry_run(
    config: &Config,
    base: &FsPath,
    lake: &Lake,
    tables: &[String],
    backfill: Option<&Backfill>,
) -> Result<(String, Option<Error>)> {
    if let Some(unknown) = tables.iter().find(|t| config.table(t).is_none()) {
        table_config(config, unknown)?;
    }
    if backfill.is_some() {
        check_tables(config, tables)?;
    }
    for source in config.sources.values() {
        register_url_secret(&source.url);
    }
    let mut out = String::from(match backfill {
        None => "dry run: reads manifests and source catalogs only; nothing is written, locked or loaded\n",
        Some(_) => "dry run of a backfill: reads manifests, source catalogs and the range's rows; nothing is written, locked or loaded\n",
    });
    let mut failure = None;
    for t in &config.tables {
        if !tables.is_empty() && !tables.contains(&t.name) {
            continue;
        }
        let source = &config.sources[&t.source];
        out.push_str(&format!(
            "\ntable {} ({}, source {})\n",
            t.name,
            mode_text(t),
            t.source
        ));
        let manifest = lake.read_manifest(&t.name).await?;
        match &t.capture {
            CaptureConfig::Watermark(w) => {
                let mut typed = None;
                let base_sql = match (&w.source_table, &w.query) {
                    (Some(st), _) => {
                        match crate::source::types::plan(&t.name, source.kind, &source.url, st)
                            .await
                        {
                            Ok(plan) => {
                                let sql = plan.sql.clone();
                                typed = Some(plan);
                                Some(sql)
                            }
                            Err(e) => {
                                out.push_str(&format!("  cannot plan the query: {e}\n"));
                                failure.get_or_insert(e);
                                None
                            }
                        }
                    }
                    (None, Some(q)) => Some(q.trim().trim_end_matches(';').to_string()),
                    (None, None) => None,
                };
                let watermark = manifest.as_ref().and_then(|m| m.watermark);
                if let Some(b) = backfill {
                    let plan = backfill_plan(
                        t,
                        source,
                        b,
                        base_sql.as_deref(),
                        typed.as_ref(),
                        manifest.as_ref(),
                        &mut out,
                    )
                    .await;
                    if let Err(e) = plan {
                        out.push_str(&format!("  cannot backfill: {e}\n"));
                        failure.get_or_insert(e);
                    }
                } else if let Some(base_sql) = base_sql {
                    match read_from(&w.cursor, watermark, w.lookback) {
                        Ok(from) => {
                            let sql = extract_query(
                                Dialect::from(source.kind),
                                &base_sql,
                                &w.cursor,
                                &w.partition_by,
                                from.as_ref(),
                            );
                            out.push_str(&format!("  query: {sql}\n"));
                        }
                        Err(e) => out.push_str(&format!("  cannot read: {e}\n")),
                    }
                }
                match &watermark {
                    _ if backfill.is_some() => {}
                    Some(at) => out.push_str(&format!(
                        "  watermark range: {} >= {at}{} (rows loaded as they are read again are skipped) up to the largest value read, held at the start of the oldest open transaction\n",
                        w.cursor,
                        if w.lookback.is_some() { " less the lookback" } else { "" }
                    )),
                    None => out.push_str(&format!(
                        "  watermark range: none yet: every row, up to the largest {} read\n",
                        w.cursor
                    )),
                }
                if backfill.is_none() {
                    out.push_str(&format!(
                        "  partitions replaced: the {} days of the rows read (a day with files is merged by key and rewritten)\n",
                        w.partition_by
                    ));
                    if w.detect_deletes {
                        out.push_str("  deletes: each day's key count and fingerprint compared with the source; days that differ lose the keys the source no longer has\n");
                    }
                }
            }
            CaptureConfig::ChangeStream(m) => {
                let collection = m.collection.as_str();
                match manifest.as_ref().and_then(|m| m.change_stream.as_ref()) {
                    None if manifest.as_ref().is_some_and(|m| !m.partitions.is_empty()) => {
                        out.push_str("  the lake's change table has rows but no change-stream position: the run would stop and ask for a reset\n");
                    }
                    None => out.push_str(&format!(
                        "  first run: read the cluster time T0, snapshot the whole collection {collection:?} as insert rows (_version of T0), then follow its change stream from right after T0 until caught up\n  ClickHouse: {0} and {0}{CURRENT_SUFFIX} are dropped and reloaded from the lake\n",
                        t.name
                    )),
                    Some(p) => out.push_str(&format!(
                        "  change stream of {collection:?}: {}\n  reads inserts, updates (whole documents, updateLookup) and deletes until caught up or past the cluster time at its start, {} events per batch; appends change rows to their _change_date days\n",
                        p.describe(),
                        t.batch_rows
                    )),
                }
                out.push_str(&format!(
                    "  partitions replaced in ClickHouse: the days of the events read, in {0} and {0}{CURRENT_SUFFIX} (ReplacingMergeTree: SELECT … FINAL is the current state)\n",
                    t.name
                ));
            }
            CaptureConfig::Snapshot(m) | CaptureConfig::SnapshotDiff(m) => {
                let day = std::env::var(SNAPSHOT_DATE_ENV)
                    .unwrap_or_else(|_| chrono::Utc::now().format("%Y-%m-%d").to_string());
                out.push_str(&format!(
                    "  query: the whole collection {:?}, sorted by key\n  partition replaced: {day} ({})\n",
                    m.collection,
                    if t.mode() == CaptureMode::Snapshot {
                        "the snapshot day"
                    } else {
                        "the change day; diffed against the last earlier snapshot"
                    }
                ));
            }
        }
        match &manifest {
            None => out.push_str("  committed: nothing yet (first run)\n"),
            Some(m) => out.push_str(&describe_manifest(m)),
        }
    }
    let models = crate::transform::model_names(config, base)?;
    if !models.is_empty() {
        out.push_str(&format!(
            "\nthen the SQL models, rebuilt in dependency order: {}\n",
            models.join(", ")
        ));
    }
    Ok((out, failure))
}

/// The backfill part of a dry run for one watermark table: the query, the
/// watermark that stays, and the partition days of the range's rows, read from
/// the source (streamed and counted, nothing kept).
async fn backfill_plan(
    t: &TableConfig,
    source: &crate::config::SourceConfig,
    backfill: &Backfill,
    base_sql: Option<&str>,
    typed: Option<&crate::source::types::TypedSelect>,
    manifest: Option<&Manifest>,
    out: &mut String,
) -> Result<()> {
    use futures::StreamExt;

    let Some(w) = t.watermark() else {
        return Ok(()); // only watermark tables are backfilled (checked before)
    };
    let watermark = manifest.and_then(|m| m.watermark);
    let range = backfill.cursor_range(&t.name, &w.cursor, watermark.as_ref())?;
    let Some(base_sql) = base_sql else {
        return Ok(());
    };
    let sql = backfill_query(
        Dialect::from(source.kind),
        base_sql,
        &w.cursor,
        &w.partition_by,
        &range,
    );
    out.push_str(&format!("  query: {sql}\n"));
    out.push_str(&format!(
        "  backfill: {} from {} up to, not including, {} (the days {backfill}, UTC); the watermark stays at {}\n",
        w.cursor,
        range.from,
        range.to,
        watermark.map(|at| at.to_string()).unwrap_or_default()
    ));
    let mut stream = crate::source::sql::read(&t.name, &source.url, sql, t.batch_rows).await?;
    if let Some(typed) = typed {
        stream = typed.apply(&t.name, stream)?;
    }
    let column = stream.schema.index_of(&w.partition_by).map_err(|_| {
        Error::capture(
            &t.name,
            format!(
                "partition_by column {:?} is not in the source's columns",
                w.partition_by
            ),
        )
    })?;
    let mut days: std::collections::BTreeMap<i32, u64> = Default::default();
    while let Some(batch) = stream.batches.next().await {
        let batch = batch?;
        for slice in crate::lake::writer::split_by_day(&batch, column, &w.partition_by)
            .map_err(|e| Error::capture(&t.name, e))?
        {
            *days.entry(slice.day).or_default() += slice.batch.num_rows() as u64;
        }
    }
    let rows: u64 = days.values().sum();
    out.push_str(&format!(
        "  partitions replaced: {} row(s) read on {} day(s) of {}; a day is rewritten only where a row differs from the lake's\n",
        rows,
        days.len(),
        w.partition_by
    ));
    for (day, rows) in days {
        let day = crate::lake::writer::day_string(day);
        let lake_rows = manifest
            .and_then(|m| m.partitions.get(&day))
            .map(|p| p.rows);
        out.push_str(&format!(
            "    {day}: {rows} row(s) read, {}\n",
            match lake_rows {
                Some(n) => format!("merged by key into the day's {n} row(s)"),
                None => "a new day in the lake".into(),
            }
        ));
    }
    Ok(())
}
