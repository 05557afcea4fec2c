//! Watermark capture of a SQL table (and its backfill over a range of the
//! cursor): read the rows whose cursor is at or past the watermark, ordered by
//! the partition day, write each day's rows as they arrive (straight into final
//! files for a day the lake does not have, into a staging folder for a day it
//! has), then merge each staged day with its committed files by key. The
//! outcome replaces the touched days; the watermark and the keys of the rows at
//! exactly it move once ClickHouse has the rows (see `pipeline::table`).
//!
//! A rerun reads from the old watermark: rows already loaded at exactly it are
//! skipped by key (the boundary keys), everything else merges by key, so a crash
//! anywhere neither loses nor duplicates a row.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use tracing::{info, warn};

use super::backfill::{backfill_query, Backfill};
use super::cursor::{
    extract_query, read_from, CursorColumn, CursorValue, SeenRow, TrackerStart, WatermarkTracker,
};
use super::deletes;
use super::merge::{conform, merge_partition};
use super::{
    Apply, Capture, CaptureContext, CaptureCounts, CaptureOutcome, Committed, LakeTable, Position,
    SchemaUpdate, TableChange,
};
use crate::config::{Config, TableConfig, WatermarkConfig};
use crate::error::{Error, Result};
use crate::fault;
use crate::lake::join;
use crate::lake::manifest::{FileEntry, Manifest};
use crate::lake::schema::{self, SchemaChange};
use crate::lake::writer::{day_string, parse_day, split_by_day, FileRoller};
use crate::lake::Lake;
use crate::progress::{Stage, TableProgress};
use crate::source::horizon::{self, CommitHorizon};
use crate::source::sql::Dialect;
use crate::warehouse::LoadTarget;
use crate::warehouse::WarehouseTables;

/// Watermark capture (and its backfill) of one SQL table.
pub struct Watermark<'a> {
    pub table: &'a TableConfig,
    /// The table's watermark settings.
    pub settings: &'a WatermarkConfig,
    /// Rebuild the table from a full reload when its source schema changed in a
    /// way the lake cannot follow.
    pub allow_schema_change: bool,
    /// Read again these days of the cursor, keeping the watermark.
    pub backfill: Option<&'a Backfill>,
}

impl Capture for Watermark<'_> {
    fn lake_tables(&self) -> Vec<LakeTable> {
        vec![LakeTable {
            name: self.table.name.clone(),
            partition_column: self.settings.partition_by.clone(),
            key: self.table.key.clone(),
        }]
    }

    fn warehouse_tables(&self) -> WarehouseTables {
        let t = self.table;
        WarehouseTables {
            target: LoadTarget::for_table(t, &self.settings.partition_by, &t.key),
            current: None,
        }
    }

    async fn capture(
        &self,
        ctx: &CaptureContext<'_>,
        committed: &Committed,
    ) -> Result<CaptureOutcome> {
        let run = WatermarkRun {
            config: ctx.config,
            table: self.table,
            settings: self.settings,
            lake: ctx.lake,
            run_id: ctx.run_id,
            allow_schema_change: self.allow_schema_change,
            backfill: self.backfill,
            progress: ctx.progress,
        };
        run.run(committed.manifests[0].clone()).await
    }
}

struct WatermarkRun<'a> {
    config: &'a Config,
    table: &'a TableConfig,
    settings: &'a WatermarkConfig,
    lake: &'a Lake,
    run_id: &'a str,
    allow_schema_change: bool,
    backfill: Option<&'a Backfill>,
    progress: &'a TableProgress,
}

/// Days merged at the same time by an incremental run. A day's merge is mostly
/// waiting on the lake (one GET per old file, one PUT per new one); each holds
/// one day's writer and its changed keys, a few MiB for a daily file. Measured on
/// the fintech incremental (~300 touched days per table): 4 → 16 took the merge
/// stage from ~7-11 s to the figure in benches/README.md.
const MERGE_CONCURRENCY: usize = 16;

/// An open transaction older than this, holding the watermark back, is named in
/// the run's warnings.
const LONG_TRANSACTION_SECONDS: i64 = 3600;

/// Sequence numbers of the files of days rewritten without deleted keys (after
/// any the extract and merge use).
const DELETE_SEQ: usize = 1 << 30;

/// What delete detection removed.
#[derive(Default)]
struct Deleted {
    rows: u64,
    /// The deleted keys, as text (columns joined by U+001F).
    keys: std::collections::HashSet<String>,
    /// The fingerprint of each day read or rewritten, for the manifest.
    prints: BTreeMap<String, crate::lake::manifest::KeyPrint>,
}

/// One day after the merge: its final files, and what they replaced.
struct MergedDay {
    day_name: String,
    files: Vec<FileEntry>,
    /// What the merge found, for a day that had files (`None` for a new day).
    merged: Option<crate::capture::merge::Merged>,
}

/// Files written for one day during the extract.
enum DayOutput {
    /// The day had no files: these are its final files.
    New(Vec<FileEntry>),
    /// The day had files: these staged files must be merged into them.
    Staged(Vec<FileEntry>),
}

impl WatermarkRun<'_> {
    async fn run(&self, committed: Manifest) -> Result<CaptureOutcome> {
        let t = self.table;
        let name = t.name.as_str();
        if committed.partition_column != self.settings.partition_by || committed.key != t.key {
            return Err(Error::capture(
                name,
                format!(
                    "the lake's table was built with partition_by = {:?} and key = {:?}; the config now says {:?} and {:?} (delete the table's folder to rebuild it)",
                    committed.partition_column, committed.key, self.settings.partition_by, t.key
                ),
            ));
        }
        let mut manifest = committed;
        let mut counts = CaptureCounts::default();
        let mut warnings = Vec::new();
        let watermark_before = manifest.watermark.map(|w| w.to_string());
        // A backfill reads a range of the cursor in the watermark's type.
        let backfill = match self.backfill {
            Some(b) => {
                Some(b.cursor_range(name, &self.settings.cursor, manifest.watermark.as_ref())?)
            }
            None => None,
        };
        let source = &self.config.sources[&t.source];
        let dialect = Dialect::from(source.kind);
        // A source table is read through a typed SELECT (source::types): exact
        // decimals, JSON as text, UTC instants; uncarriable types fail here.
        let typed = match &self.settings.source_table {
            Some(table) => {
                Some(crate::source::types::plan(name, source.kind, &source.url, table).await?)
            }
            None => None,
        };
        let base = match (&typed, &self.settings.query) {
            (Some(typed), _) => typed.sql.clone(),
            (None, Some(query)) => query.trim().trim_end_matches(';').to_string(),
            (None, None) => unreachable!("validated: one of source_table and query"),
        };
        // Where this run reads from (the watermark less the lookback), and how far
        // its watermark may move (the start of the oldest open transaction).
        let read_from = read_from(
            &self.settings.cursor,
            manifest.watermark,
            self.settings.lookback,
        )
        .map_err(|e| Error::capture(name, e))?;
        let horizon = match backfill {
            Some(_) => None,
            None => self.commit_horizon(source, &mut warnings).await,
        };
        let sql = match &backfill {
            Some(range) => backfill_query(
                dialect,
                &base,
                &self.settings.cursor,
                &self.settings.partition_by,
                range,
            ),
            None => extract_query(
                dialect,
                &base,
                &self.settings.cursor,
                &self.settings.partition_by,
                read_from.as_ref(),
            ),
        };
        match &backfill {
            Some(range) => info!(from = %range.from, to = %range.to, "Backfill extract started."),
            None => info!(from = ?watermark_before, "Extract started."),
        }
        let stage = Instant::now();
        self.progress.stage(Stage::Extract, None);
        let mut stream = crate::source::sql::read(name, &source.url, sql, t.batch_rows).await?;
        if let Some(typed) = &typed {
            stream = typed.apply(name, stream)?;
        }
        let schema = stream.schema.clone();
        let (cursor, key_columns, partition_column) = self.check_columns(&schema)?;
        if self.settings.detect_deletes {
            if dialect == Dialect::Sqlite {
                return Err(Error::capture(
                    name,
                    "detect_deletes compares keys in SQL at PostgreSQL and MySQL sources; a SQLite source has no MD5",
                ));
            }
            deletes::check_key_types(name, &schema, &t.key)?;
        }

        // Schema evolution: additions and widenings are followed; anything else stops
        // the table unless a rebuild (a full reload) was asked for.
        let mut rebuild = false;
        let change = schema::compare(&manifest.schema, &schema);
        match &change {
            SchemaChange::Same => {}
            SchemaChange::Evolve { added, widened } => {
                let text = describe_evolution(added, widened);
                info!(change = %text, "Source schema evolved.");
                warnings.push(format!("schema evolved: {text}"));
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
                warnings.push(format!("table rebuilt: {}", reasons.join("; ")));
                // Read as a table never loaded: every day new, no watermark.
                rebuild = true;
                manifest = Manifest::new(name, &self.settings.partition_by, &t.key);
                if watermark_before.is_some() {
                    drop(stream);
                    let sql = extract_query(
                        dialect,
                        &base,
                        &self.settings.cursor,
                        &self.settings.partition_by,
                        None,
                    );
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
        // A backfill skips nothing: every row of its range is merged.
        let lookback = cursor
            .lookback(&self.settings.cursor, self.settings.lookback)
            .map_err(|e| Error::capture(name, e))?;
        let start = match backfill {
            Some(_) => TrackerStart {
                previous: None,
                seen: &[],
                legacy_boundary: &[],
                lookback: 0,
                horizon: None,
            },
            None => TrackerStart {
                previous: manifest.watermark,
                seen: &manifest.seen_rows,
                legacy_boundary: &manifest.boundary_keys,
                lookback,
                horizon: horizon.as_ref().and_then(|h| cursor.horizon(h)),
            },
        };
        let mut tracker = WatermarkTracker::new(cursor, key_columns.clone(), start);

        // Extract: one open writer at a time, since rows arrive ordered by day.
        let mut outputs: BTreeMap<i32, DayOutput> = BTreeMap::new();
        let mut open: Option<(i32, FileRoller)> = None;
        let mut rollers = 0usize;
        let mut batches = stream.batches;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            counts.rows_read += batch.num_rows() as u64;
            self.progress.rows_read(batch.num_rows() as u64);
            let batch = tracker
                .observe(batch)
                .map_err(|e| Error::capture(name, e))?;
            let batch = conform(name, &schema, batch)?;
            let slices = split_by_day(&batch, partition_column, &self.settings.partition_by)
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
                counts.rows_changed += slice.batch.num_rows() as u64;
                roller.write(&slice.batch).await?;
                fault::point("extract.batch");
            }
        }
        if let Some((day, roller)) = open.take() {
            self.close_day(&mut outputs, day, roller, &manifest).await?;
        }
        counts.rows_skipped = tracker.skipped;
        if tracker.null_cursor_rows > 0 {
            warnings.push(format!(
                "{} row(s) have a NULL {}: they are loaded now but later changes to them are not seen",
                tracker.null_cursor_rows, self.settings.cursor
            ));
        }
        let (new_watermark, seen): (_, Vec<SeenRow>) = match backfill {
            // The backfill's own commit path: the capture position stays.
            Some(_) => (manifest.watermark, Vec::new()),
            None => {
                let end = tracker.finish();
                if let (Some(held_from), Some(horizon)) = (end.held_from, &horizon) {
                    self.report_hold(held_from, end.watermark, horizon, &mut warnings);
                }
                (end.watermark, end.seen)
            }
        };
        if let (Some(old), Some(new)) = (manifest.watermark, new_watermark) {
            if new < old {
                warnings.push(format!("cursor went backwards: {new} < {old}"));
            }
        }
        info!(
            rows_read = counts.rows_read,
            rows_changed = counts.rows_changed,
            rows_skipped = counts.rows_skipped,
            "Extract finished."
        );
        counts.extract_seconds = stage.elapsed().as_secs_f64();
        let stage = Instant::now();

        // Merge staged days into their committed files: each day's final files.
        let mut days: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
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
            } = merged?;
            if let Some(merged) = merged {
                // Rows a backfill read exactly as the lake has them.
                counts.rows_changed -= merged.identical_rows;
                counts.rows_skipped += merged.identical_rows;
                self.progress.day_merged();
                if merged.unchanged {
                    continue;
                }
                counts.rows_replaced += merged.replaced_rows - merged.identical_rows;
                self.progress
                    .bytes_written(files.iter().map(|f| f.bytes).sum());
            }
            days.insert(day_name, files);
        }
        drop(merged_days);
        counts.merge_seconds = stage.elapsed().as_secs_f64();

        // Hard deletes: the days whose keys differ from the source's lose the
        // keys the source no longer has. A rebuild read the whole source anyway.
        let mut seen = seen;
        let mut key_prints = BTreeMap::new();
        if self.settings.detect_deletes && backfill.is_none() && !rebuild {
            let source = deletes::Source {
                table: name,
                url: &source.url,
                dialect,
                base: &base,
                partition_by: &self.settings.partition_by,
                partition_type: schema.field(partition_column).data_type().clone(),
                key: &t.key,
            };
            let deleted = self
                .detect_deletes(&source, &manifest, &schema, &mut days, &mut warnings)
                .await?;
            counts.rows_deleted = deleted.rows;
            key_prints = deleted.prints;
            seen.retain(|row| !deleted.keys.contains(&row.key.join("\u{1f}")));
        }

        let schema_moves = !matches!(change, SchemaChange::Same) || manifest.schema.is_empty();
        let watermark_after = match backfill {
            Some(_) => watermark_before.clone(),
            None => new_watermark.map(|w| w.to_string()),
        };
        let position = match backfill {
            // A backfill's commits keep the capture position as it is.
            Some(_) => Position::Keep,
            None => Position::Watermark {
                watermark: new_watermark,
                seen,
            },
        };
        let apply = if rebuild {
            Apply::ReplaceTable(days)
        } else {
            Apply::ReplaceDays {
                days,
                drop_days: BTreeSet::new(),
            }
        };
        Ok(CaptureOutcome {
            changes: vec![TableChange {
                apply,
                schema: if schema_moves {
                    SchemaUpdate::Record(schema.clone())
                } else {
                    SchemaUpdate::Keep
                },
                load: true,
                key_prints,
            }],
            schema,
            today: crate::lake::writer::today(),
            position,
            rebuild_warehouse: rebuild,
            counts,
            position_before: watermark_before,
            position_after: watermark_after,
            warnings,
        })
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
        })
    }

    /// Compares each day's keys with the source's and rewrites the days that
    /// hold keys the source no longer has, without them (`days` gets their new
    /// files; a day left empty gets none, and ClickHouse drops its partition).
    async fn detect_deletes(
        &self,
        source: &deletes::Source<'_>,
        manifest: &Manifest,
        schema: &SchemaRef,
        days: &mut BTreeMap<String, Vec<FileEntry>>,
        warnings: &mut Vec<String>,
    ) -> Result<Deleted> {
        let name = self.table.name.as_str();
        let started = Instant::now();
        let table_dir = self.lake.table_path(name);
        // Each day's files as they will be committed: this run's, else the lake's.
        // A committed day keeps its fingerprint in the manifest: it is not read.
        let paths = |files: &[FileEntry]| -> Vec<(object_store::path::Path, u64)> {
            files
                .iter()
                .map(|f| (join(&table_dir, &f.path), f.bytes))
                .collect()
        };
        let mut day_files = BTreeMap::new();
        let mut cached: BTreeMap<i32, deletes::DayPrint> = BTreeMap::new();
        for (day_name, partition) in &manifest.partitions {
            let Some(day) = parse_day(day_name) else {
                continue;
            };
            if days.contains_key(day_name) {
                continue; // rewritten by this run: its files are below
            }
            if let Some(print) = partition.key_print {
                cached.insert(day, print.into());
            }
            day_files.insert(day, paths(&partition.files));
        }
        for (day_name, files) in days.iter() {
            if let Some(day) = parse_day(day_name) {
                day_files.insert(day, paths(files));
            }
        }
        day_files.retain(|_, files| !files.is_empty());
        let lake = deletes::LakeDays {
            table: name,
            lake: self.lake,
            schema,
            key: &self.table.key,
            days: day_files,
        };
        // Each side timed on its own (they run at the same time), for the log.
        let timed = |started: Instant| started.elapsed().as_secs_f64();
        let ((source_prints, source_seconds), (lake_prints, lake_seconds)) = futures::try_join!(
            async {
                let t = Instant::now();
                source.prints().await.map(|p| (p, timed(t)))
            },
            async {
                let t = Instant::now();
                lake.prints(&cached).await.map(|p| (p, timed(t)))
            }
        )?;
        let mut deleted = Deleted::default();
        // The days read get their fingerprint cached with this run's commit.
        for (day, print) in &lake_prints {
            if let Some(cached) = print.to_cached() {
                deleted.prints.insert(day_string(*day), cached);
            }
        }
        let read_days = lake_prints.len();
        let mut lake_prints = lake_prints;
        lake_prints.extend(cached);
        let (compare, missing) = deletes::disagreeing_days(&source_prints, &lake_prints);
        if !missing.is_empty() {
            warnings.push(format!(
                "the source has rows on {} day(s) the lake has none of ({}): rows committed after the extract arrive with the next run; rows stamped below the watermark need `lookback` or a backfill (`sluice run --since … --until …`)",
                missing.len(),
                deletes::day_names(&missing)
            ));
        }
        if compare.is_empty() {
            info!(
                days = lake_prints.len(),
                days_read = read_days,
                source_seconds,
                lake_seconds,
                seconds = started.elapsed().as_secs_f64(),
                "Deletes: every day agrees with the source."
            );
            return Ok(deleted);
        }
        let source_keys = source.keys(&compare).await?;
        fault::point("detect_deletes.after_keys");
        let mut rewritten = 0usize;
        for (i, day) in compare.iter().enumerate() {
            let files = &lake.days[day];
            let at_source = source_keys.get(day);
            let gone: std::collections::HashSet<String> = lake
                .keys_of(files)
                .await?
                .into_iter()
                .filter(|k| at_source.is_none_or(|s| !s.contains(k)))
                .collect();
            if gone.is_empty() {
                continue; // the source has more rows: they arrive with the watermark
            }
            let roller = self.open_final(*day, schema, DELETE_SEQ + i)?;
            let (files_out, removed, kept) = lake.rewrite_without(files, &gone, roller).await?;
            let day_name = day_string(*day);
            match kept.to_cached() {
                Some(kept) => deleted.prints.insert(day_name.clone(), kept),
                None => deleted.prints.remove(&day_name),
            };
            // Files this run wrote for the day and just replaced were never committed.
            if let Some(superseded) = days.insert(day_name, files_out) {
                for f in superseded {
                    self.lake.store().delete(&join(&table_dir, &f.path)).await?;
                }
            }
            deleted.rows += removed;
            deleted.keys.extend(gone);
            rewritten += 1;
        }
        info!(
            days_compared = lake_prints.len(),
            days_read = read_days,
            days_differing = compare.len(),
            days_rewritten = rewritten,
            rows_deleted = deleted.rows,
            source_seconds,
            lake_seconds,
            seconds = started.elapsed().as_secs_f64(),
            "Deletes detected."
        );
        Ok(deleted)
    }

    /// The source's commit horizon, or `None` (with a warning saying why) when
    /// it cannot be read.
    async fn commit_horizon(
        &self,
        source: &crate::config::SourceConfig,
        warnings: &mut Vec<String>,
    ) -> Option<CommitHorizon> {
        match horizon::commit_horizon(&self.table.name, source.kind, &source.url).await {
            Ok(Some(h)) => {
                if let Some(blind) = &h.blind {
                    warn!(reason = %blind, "Open transactions partly visible.");
                    warnings.push(blind.clone());
                }
                Some(h)
            }
            Ok(None) => None,
            Err(reason) => {
                warn!(%reason, "Open transactions cannot be read.");
                warnings.push(format!(
                    "the source's open transactions cannot be read ({reason}); the watermark moves to the largest value read, so rows of transactions open during the run can be missed"
                ));
                None
            }
        }
    }

    /// Logs a watermark held back by an open transaction, and warns when that
    /// transaction has been open for long (it holds every later run back too).
    fn report_hold(
        &self,
        held_from: CursorValue,
        watermark: Option<CursorValue>,
        horizon: &CommitHorizon,
        warnings: &mut Vec<String>,
    ) {
        let watermark = watermark.map(|w| w.to_string()).unwrap_or_default();
        info!(largest_read = %held_from, %watermark, "Watermark held at the start of the oldest open transaction; the rows after it are read again next run.");
        if let Some((pid, started)) = horizon.oldest {
            let open_for = (chrono::Utc::now().timestamp_micros() - started) / 1_000_000;
            if open_for >= LONG_TRANSACTION_SECONDS {
                warnings.push(format!(
                    "a transaction open for {} min (server process {pid}) holds the watermark at {watermark}: every run reads again the rows after it until it ends",
                    open_for / 60
                ));
            }
        }
    }

    /// Resolves the configured columns in the source's schema.
    fn check_columns(&self, schema: &SchemaRef) -> Result<(CursorColumn, Vec<usize>, usize)> {
        let t = self.table;
        let name = t.name.as_str();
        let cursor = CursorColumn::new(schema, &self.settings.cursor)
            .map_err(|e| Error::capture(name, e))?;
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
        let partition = find(&self.settings.partition_by, "partition_by")?;
        Ok((cursor, keys, partition))
    }

    fn day_dir(&self, day: i32) -> String {
        crate::lake::delta::partition_folder(&self.settings.partition_by, &day_string(day))
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
