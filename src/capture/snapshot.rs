//! Snapshot capture for sources without a change cursor (MongoDB collections).
//!
//! - [`CaptureMode::Snapshot`]: the whole collection is written every run into the
//!   day's `snapshot_date=YYYY-MM-DD` partition; a rerun the same day replaces it.
//! - [`CaptureMode::SnapshotDiff`]: the collection, read sorted by key, is
//!   merge-joined with the last committed snapshot of an earlier day (also stored
//!   sorted by key) on `_key`, comparing `_hash` (the document's content hash).
//!   The differences become the day's partition of the change table `<name>`
//!   (`_op` = insert / update / delete); the new snapshot becomes the state table
//!   `<name>_current` in the lake. In ClickHouse, `<name>_current` is a
//!   `ReplacingMergeTree(_version, _is_deleted)` over the same change rows, so that
//!   `SELECT … FINAL` is the current state.
//!
//! Memory: the merge join holds one batch of each side (at most `batch_rows`
//! documents or 32 MiB of BSON from MongoDB, `batch_rows` rows from the lake) plus
//! the Parquet writers' row groups; neither snapshot is ever whole in memory.
//! Snapshot mode may read `read_parallelism` ranges of the key at once (one
//! batch being decoded per range); the diff always reads one cursor in key order.
//!
//! The day is the run's UTC date, or `SLUICE_SNAPSHOT_DATE=YYYY-MM-DD` (tests,
//! backfills of a missed night). Only one diff per day is kept: a rerun compares
//! against the same earlier snapshot and replaces the day's change set, so reruns
//! are idempotent.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, StringArray, UInt64Array,
    UInt8Array,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use tracing::{info, warn};

use crate::capture::merge::conform;
use crate::config::{CaptureMode, Config, TableConfig};
use crate::error::{Error, Result};
use crate::lake::manifest::{Manifest, PartitionEntry};
use crate::lake::writer::{day_string, parse_day, FileRoller};
use crate::lake::Lake;
use crate::run::TableReport;
use crate::source::mongo::{CollectionSource, ColumnType, DocumentSchema, HASH_COLUMN, KEY_COLUMN};
use crate::warehouse::Warehouse;

/// Environment variable that sets the snapshot day instead of today (UTC).
pub const SNAPSHOT_DATE_ENV: &str = "SLUICE_SNAPSHOT_DATE";
/// Partition column of snapshots.
pub const SNAPSHOT_DATE: &str = "snapshot_date";
/// Partition column of the change table.
pub const CHANGE_DATE: &str = "_change_date";
/// Change kind: `insert`, `update` or `delete`.
pub const OP: &str = "_op";
/// The change day as `YYYYMMDD`: ReplacingMergeTree keeps the highest.
pub const VERSION: &str = "_version";
/// 1 for a delete: `FINAL` hides the key.
pub const IS_DELETED: &str = "_is_deleted";
/// Suffix of the state table (lake) and the current-state table (ClickHouse).
pub const CURRENT_SUFFIX: &str = "_current";

/// Runs one MongoDB table in `snapshot` or `snapshot_diff` mode.
pub async fn run_table(
    config: &Config,
    table: &TableConfig,
    lake: &Lake,
    warehouse: Option<&Warehouse>,
    run_id: &str,
) -> Result<TableReport> {
    let started = Instant::now();
    let day = snapshot_day(&table.name)?;
    let source = &config.sources[&table.source];
    let collection = CollectionSource {
        url: source.url.clone(),
        collection: table.collection.clone().unwrap_or_default(),
    };
    let run = SnapshotRun {
        table,
        lake,
        warehouse,
        run_id,
        day,
    };
    let mut report = TableReport {
        table: table.name.clone(),
        ..Default::default()
    };
    let schema = run.document_schema(&collection).await?;
    info!(day = %day_string(day), collection = %collection.collection, "Snapshot started.");
    // The diff merge-joins the collection in key order: one cursor. A snapshot
    // may read key ranges at once (`read_parallelism`).
    let stream = match table.mode {
        CaptureMode::Snapshot => {
            collection
                .read_parallel(
                    &table.name,
                    schema,
                    table.batch_rows,
                    table.read_parallelism,
                )
                .await?
        }
        _ => {
            collection
                .read(&table.name, schema, table.batch_rows)
                .await?
        }
    };
    match table.mode {
        CaptureMode::Snapshot => run.snapshot(stream, &mut report).await?,
        CaptureMode::SnapshotDiff => run.snapshot_diff(stream, &mut report).await?,
        CaptureMode::Watermark | CaptureMode::ChangeStream => {
            unreachable!("run.rs sends only snapshot modes here")
        }
    }
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

/// The table's document schema (see `SnapshotRun::document_schema`): the one kept
/// in the lake once `table` has a manifest, otherwise inferred from the config and
/// a sample of the collection, and stored.
pub(crate) async fn document_schema(
    table: &TableConfig,
    lake: &Lake,
    collection: &CollectionSource,
) -> Result<DocumentSchema> {
    let run = SnapshotRun {
        table,
        lake,
        warehouse: None,
        run_id: "",
        day: 0,
    };
    run.document_schema(collection).await
}

/// The run's snapshot day: `SLUICE_SNAPSHOT_DATE` or today (UTC).
fn snapshot_day(table: &str) -> Result<i32> {
    match std::env::var(SNAPSHOT_DATE_ENV) {
        Ok(text) => parse_day(text.trim()).ok_or_else(|| {
            Error::capture(
                table,
                format!("{SNAPSHOT_DATE_ENV}={text:?} is not a date (YYYY-MM-DD)"),
            )
        }),
        Err(_) => Ok(
            parse_day(&chrono::Utc::now().format("%Y-%m-%d").to_string()).expect("today is a date"),
        ),
    }
}

struct SnapshotRun<'a> {
    table: &'a TableConfig,
    lake: &'a Lake,
    warehouse: Option<&'a Warehouse>,
    run_id: &'a str,
    day: i32,
}

impl SnapshotRun<'_> {
    fn name(&self) -> &str {
        &self.table.name
    }

    fn key(&self) -> String {
        self.table.key_fields().remove(0)
    }

    /// Where the table's document schema is kept: decided on the first run (from
    /// the config and a sample), then fixed, so that every snapshot has the same
    /// columns and new fields go to `_overflow`.
    fn schema_path(&self) -> String {
        format!("_sluice/mongo/{}/schema.json", self.name())
    }

    async fn document_schema(&self, collection: &CollectionSource) -> Result<DocumentSchema> {
        let name = self.name();
        let path = self.lake.path(&self.schema_path());
        let committed = self.lake.read_manifest(name).await?.is_some();
        if committed {
            match self.lake.store().get(&path).await {
                Ok(object) => {
                    let bytes = object.bytes().await?;
                    let schema: DocumentSchema = serde_json::from_slice(&bytes).map_err(|e| {
                        Error::lake(format!("{path} is not a sluice document schema: {e}"))
                    })?;
                    return Ok(schema);
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let declared: Vec<(String, ColumnType)> = self
            .table
            .columns
            .iter()
            .map(|(n, t)| (n.clone(), ColumnType::parse(t).expect("validated")))
            .collect();
        let sample = collection.sample(name, self.table.infer_sample).await?;
        let schema = DocumentSchema::infer(
            sample.iter().map(|d| d.as_ref()),
            &declared,
            self.table.nested,
            self.table.on_mismatch,
            &self.key(),
        );
        if !schema.columns.iter().any(|c| c.name == schema.key) {
            return Err(Error::capture(
                name,
                format!(
                    "key field {:?} is not in the sampled documents or the declared columns",
                    schema.key
                ),
            ));
        }
        let json = serde_json::to_vec_pretty(&schema)
            .map_err(|e| Error::lake(format!("encoding {path}: {e}")))?;
        self.lake.store().put(&path, PutPayload::from(json)).await?;
        info!(
            columns = schema.columns.len(),
            sampled = sample.len(),
            "Schema inferred."
        );
        Ok(schema)
    }

    /// Reads a table's manifest, checking it was made by the same kind of capture.
    async fn manifest(&self, table: &str, partition_column: &str) -> Result<Manifest> {
        let key = vec![self.key()];
        match self.lake.read_manifest(table).await? {
            Some(m) if m.partition_column == partition_column && m.key == key => Ok(m),
            Some(m) => Err(Error::capture(
                table,
                format!(
                    "the lake's table was built with partition column {:?} and key {:?}; this run needs {:?} and {:?} (mode or key changed: delete the table's folder to rebuild it)",
                    m.partition_column, m.key, partition_column, key
                ),
            )),
            None => Ok(Manifest::new(table, partition_column, &key)),
        }
    }

    fn roller(&self, table: &str, column: &str, schema: &SchemaRef, seq: usize) -> FileRoller {
        let rel = format!("{column}={}", day_string(self.day));
        let dir = self.lake.path(&format!("{table}/{rel}"));
        FileRoller::new(
            self.lake,
            dir,
            rel,
            &format!("{}-{seq}", self.run_id),
            Arc::clone(schema),
        )
    }

    async fn commit(&self, next: &mut Manifest) -> Result<()> {
        next.version += 1;
        next.run_id = self.run_id.to_string();
        next.committed_at = chrono::Utc::now().to_rfc3339();
        self.lake.write_manifest(next).await
    }

    /// A `TableConfig` for the warehouse's loads of `name` partitioned by `column`.
    fn warehouse_table(&self, name: &str, column: &str, retention: Option<u32>) -> TableConfig {
        let mut t = self.table.clone();
        t.name = name.to_string();
        t.partition_by = column.to_string();
        t.key = vec![self.key()];
        t.retention_days = retention;
        t
    }

    /// Snapshot mode: the collection into today's partition, replacing it.
    async fn snapshot(
        &self,
        stream: crate::source::BatchStream,
        report: &mut TableReport,
    ) -> Result<()> {
        let name = self.name().to_string();
        let manifest = self.manifest(&name, SNAPSHOT_DATE).await?;
        self.lake.remove_orphans(&name, Some(&manifest)).await?;
        let data_columns = data_columns(&stream.schema);
        let schema = with_columns(
            &stream.schema,
            &data_columns,
            &[Field::new(SNAPSHOT_DATE, DataType::Date32, false)],
        );
        let stage = Instant::now();
        let mut roller = self.roller(&name, SNAPSHOT_DATE, &schema, 0);
        let mut batches = stream.batches;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            report.rows_read += batch.num_rows() as u64;
            let day = Arc::new(Date32Array::from(vec![self.day; batch.num_rows()])) as ArrayRef;
            let out = append_columns(&schema, &batch, &data_columns, vec![day])?;
            roller.write(&out).await?;
        }
        let files = roller.finish().await?;
        report.rows_changed = report.rows_read;
        report.files_written = files.len();
        report.bytes_written = files.iter().map(|f| f.bytes).sum();

        let day_name = day_string(self.day);
        let mut next = manifest.clone();
        let mut replaced: Vec<String> = manifest
            .partitions
            .get(&day_name)
            .map(|p| p.files.iter().map(|f| f.path.clone()).collect())
            .unwrap_or_default();
        next.partitions.insert(
            day_name.clone(),
            PartitionEntry {
                rows: report.rows_read,
                files,
            },
        );
        // Lake retention follows the warehouse's: snapshots older than
        // `retention_days` leave the manifest (their files are deleted after it).
        if let Some(days) = self.table.retention_days {
            let oldest = self.day - days as i32;
            let expired: Vec<String> = next
                .partitions
                .keys()
                .filter(|d| parse_day(d).is_some_and(|d| d < oldest))
                .cloned()
                .collect();
            for d in expired {
                if let Some(p) = next.partitions.remove(&d) {
                    replaced.extend(p.files.into_iter().map(|f| f.path));
                }
                next.pending_warehouse.remove(&d);
            }
        }
        next.set_schema(&schema);
        if self.warehouse.is_some() {
            next.pending_warehouse.insert(day_name.clone());
        }
        report.stages.extract = stage.elapsed().as_secs_f64();
        let stage = Instant::now();
        self.commit(&mut next).await?;
        self.lake
            .delete_files(&name, replaced.iter().map(String::as_str))
            .await?;
        report.partitions_written = vec![day_name];
        report.stages.commit = stage.elapsed().as_secs_f64();
        info!(
            rows = report.rows_read,
            version = next.version,
            "Snapshot committed."
        );

        if let Some(warehouse) = self.warehouse {
            let stage = Instant::now();
            let t = self.warehouse_table(&name, SNAPSHOT_DATE, self.table.retention_days);
            warehouse.ensure_table(&t, &schema).await?;
            let columns = column_names(&schema);
            for day in next.pending_warehouse.clone() {
                let partition = next.partitions.get(&day).cloned().unwrap_or_default();
                report.rows_loaded += warehouse
                    .load_partition(&t, &columns, &day, &partition)
                    .await?;
                report.partitions_loaded.push(day);
            }
            report.stages.warehouse = stage.elapsed().as_secs_f64();
            next.pending_warehouse.clear();
            self.commit(&mut next).await?;
        }
        report.lake_rows = next.rows();
        Ok(())
    }

    /// Snapshot-diff mode: see the module documentation.
    async fn snapshot_diff(
        &self,
        stream: crate::source::BatchStream,
        report: &mut TableReport,
    ) -> Result<()> {
        let stage = Instant::now();
        let name = self.name().to_string();
        let state_name = format!("{name}{CURRENT_SUFFIX}");
        let changes = self.manifest(&name, CHANGE_DATE).await?;
        if changes.change_stream.is_some() {
            // Its versions are cluster times: a day's diff (YYYYMMDD) would lose to them.
            return Err(Error::capture(
                &name,
                format!("the lake's change table was made by change_stream capture; start it over with `sluice state reset --table {name}` (or `sluice run --full-refresh --table {name}`) to diff snapshots"),
            ));
        }
        let state = self.manifest(&state_name, SNAPSHOT_DATE).await?;
        self.lake.remove_orphans(&name, Some(&changes)).await?;
        self.lake.remove_orphans(&state_name, Some(&state)).await?;
        let day_name = day_string(self.day);

        // The base: the latest earlier snapshot whose change set was committed too
        // (the state is committed before the changes; a snapshot without its change
        // set is from an interrupted run and is not a base).
        let base = state
            .partitions
            .iter()
            .filter(|(d, _)| d.as_str() < day_name.as_str() && changes.partitions.contains_key(*d))
            .map(|(d, p)| (d.clone(), p.clone()))
            .next_back();
        if let Some(last) = state.partitions.keys().next_back() {
            if last.as_str() > day_name.as_str() {
                return Err(Error::capture(
                    &name,
                    format!("the lake already has a snapshot of {last}, later than this run's day {day_name}; a snapshot diff only moves forward"),
                ));
            }
        }

        let data = data_columns(&stream.schema);
        let state_schema = with_columns(
            &stream.schema,
            &(0..stream.schema.fields().len()).collect::<Vec<_>>(),
            &[Field::new(SNAPSHOT_DATE, DataType::Date32, false)],
        );
        let change_schema = with_columns(
            &stream.schema,
            &data,
            &[
                Field::new(OP, DataType::Utf8, false),
                Field::new(CHANGE_DATE, DataType::Date32, false),
                Field::new(VERSION, DataType::UInt64, false),
                Field::new(IS_DELETED, DataType::UInt8, false),
            ],
        );
        let version: u64 = day_name.replace('-', "").parse().unwrap_or(0);

        let old: BoxStream<'static, Result<RecordBatch>> = match &base {
            Some((_, partition)) => {
                let lake = self.lake.clone();
                let dir = self.lake.table_path(&state_name);
                let files: Vec<_> = partition
                    .files
                    .iter()
                    .map(|f| (join(&dir, &f.path), f.bytes))
                    .collect();
                let batch_rows = self.table.batch_rows;
                futures::stream::iter(files)
                    .then(move |(path, size)| {
                        let lake = lake.clone();
                        async move { lake.read_parquet(path, size, batch_rows).await }
                    })
                    .try_flatten()
                    .boxed()
            }
            None => futures::stream::empty().boxed(),
        };
        let mut join = MergeJoin {
            name: &name,
            new: Side::new(stream.batches),
            old: Side::new(old),
            state_roller: self.roller(&state_name, SNAPSHOT_DATE, &state_schema, 0),
            change_roller: self.roller(&name, CHANGE_DATE, &change_schema, 1),
            state_schema: Arc::clone(&state_schema),
            change_schema: Arc::clone(&change_schema),
            source_schema: Arc::clone(&stream.schema),
            data,
            day: self.day,
            version,
            counts: Counts::default(),
        };
        join.run().await?;
        let counts = join.counts;
        let state_files = join.state_roller.finish().await?;
        let change_files = join.change_roller.finish().await?;
        report.rows_read = counts.read;
        report.rows_changed = counts.inserts + counts.updates + counts.deletes;
        report.files_written = state_files.len() + change_files.len();
        report.bytes_written = state_files
            .iter()
            .chain(&change_files)
            .map(|f| f.bytes)
            .sum();
        info!(
            inserts = counts.inserts,
            updates = counts.updates,
            deletes = counts.deletes,
            base = ?base.as_ref().map(|(d, _)| d),
            "Snapshot diff computed."
        );

        report.stages.extract = stage.elapsed().as_secs_f64();
        let stage = Instant::now();
        // Commit 1: the state (today's snapshot, the base kept, older ones dropped).
        let mut next_state = state.clone();
        let keep_base = base.as_ref().map(|(d, _)| d.clone());
        let mut dropped: Vec<String> = Vec::new();
        for (d, p) in &state.partitions {
            if Some(d) != keep_base.as_ref() {
                next_state.partitions.remove(d);
                dropped.extend(p.files.iter().map(|f| f.path.clone()));
            }
        }
        next_state.partitions.insert(
            day_name.clone(),
            PartitionEntry {
                rows: counts.read,
                files: state_files,
            },
        );
        next_state.set_schema(&state_schema);
        self.commit(&mut next_state).await?;

        // Commit 2: the change set of the day (possibly empty).
        let mut next = changes.clone();
        let replaced: Vec<String> = changes
            .partitions
            .get(&day_name)
            .map(|p| p.files.iter().map(|f| f.path.clone()).collect())
            .unwrap_or_default();
        next.partitions.insert(
            day_name.clone(),
            PartitionEntry {
                rows: report.rows_changed,
                files: change_files,
            },
        );
        next.set_schema(&change_schema);
        if self.warehouse.is_some() {
            next.pending_warehouse.insert(day_name.clone());
        }
        self.commit(&mut next).await?;
        self.lake
            .delete_files(&state_name, dropped.iter().map(String::as_str))
            .await?;
        self.lake
            .delete_files(&name, replaced.iter().map(String::as_str))
            .await?;
        report.partitions_written = vec![day_name];
        report.stages.commit = stage.elapsed().as_secs_f64();
        info!(version = next.version, "Lake committed.");

        if let Some(warehouse) = self.warehouse {
            let stage = Instant::now();
            let log = self.warehouse_table(&name, CHANGE_DATE, self.table.retention_days);
            warehouse.ensure_table(&log, &change_schema).await?;
            // No TTL: a key unchanged for longer than the retention is still current.
            warehouse
                .ensure_table_with_engine(
                    &state_name,
                    &change_schema,
                    CHANGE_DATE,
                    &[self.key()],
                    &format!("ReplacingMergeTree({VERSION}, {IS_DELETED})"),
                )
                .await?;
            let columns = column_names(&change_schema);
            for day in next.pending_warehouse.clone() {
                let partition = next.partitions.get(&day).cloned().unwrap_or_default();
                let rows = warehouse
                    .load_partition(&log, &columns, &day, &partition)
                    .await?;
                warehouse
                    .copy_partition(&state_name, &name, &day, rows)
                    .await?;
                report.rows_loaded += rows;
                report.partitions_loaded.push(day);
            }
            report.stages.warehouse = stage.elapsed().as_secs_f64();
            next.pending_warehouse.clear();
            self.commit(&mut next).await?;
        }
        report.lake_rows = next.rows();
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    read: u64,
    inserts: u64,
    updates: u64,
    deletes: u64,
}

/// One input of the merge join: a stream of batches sorted by `_key`.
struct Side {
    stream: BoxStream<'static, Result<RecordBatch>>,
    batch: Option<RecordBatch>,
    keys: Option<BinaryArray>,
    hashes: Option<UInt64Array>,
    pos: usize,
    /// Per row of `batch`: the change to emit (0 none, 1 insert, 2 update, 3 delete).
    ops: Vec<u8>,
    last_key: Option<Vec<u8>>,
    done: bool,
}

impl Side {
    fn new(stream: BoxStream<'static, Result<RecordBatch>>) -> Self {
        Self {
            stream,
            batch: None,
            keys: None,
            hashes: None,
            pos: 0,
            ops: Vec::new(),
            last_key: None,
            done: false,
        }
    }

    /// The key of the current row.
    fn key(&self) -> Option<&[u8]> {
        self.keys.as_ref().map(|k| k.value(self.pos))
    }

    fn hash(&self) -> u64 {
        self.hashes.as_ref().expect("a current row").value(self.pos)
    }
}

struct MergeJoin<'a> {
    name: &'a str,
    new: Side,
    old: Side,
    state_roller: FileRoller,
    change_roller: FileRoller,
    state_schema: SchemaRef,
    change_schema: SchemaRef,
    /// The source's schema (MongoDB batches and, re-read, the state's files).
    source_schema: SchemaRef,
    /// Indices of the document columns (without `_key`, `_hash`).
    data: Vec<usize>,
    day: i32,
    version: u64,
    counts: Counts,
}

impl MergeJoin<'_> {
    async fn run(&mut self) -> Result<()> {
        loop {
            self.fill(true).await?;
            self.fill(false).await?;
            let op = match (self.new.key(), self.old.key()) {
                (None, None) => return Ok(()),
                (Some(_), None) => Step::Insert,
                (None, Some(_)) => Step::Delete,
                (Some(n), Some(o)) => match n.cmp(o) {
                    std::cmp::Ordering::Less => Step::Insert,
                    std::cmp::Ordering::Greater => Step::Delete,
                    std::cmp::Ordering::Equal => Step::Same,
                },
            };
            match op {
                Step::Insert => {
                    self.new.ops[self.new.pos] = 1;
                    self.counts.inserts += 1;
                    self.new.pos += 1;
                }
                Step::Delete => {
                    self.old.ops[self.old.pos] = 3;
                    self.counts.deletes += 1;
                    self.old.pos += 1;
                }
                Step::Same => {
                    if self.new.hash() != self.old.hash() {
                        self.new.ops[self.new.pos] = 2;
                        self.counts.updates += 1;
                    }
                    self.new.pos += 1;
                    self.old.pos += 1;
                }
            }
        }
    }

    /// Makes sure the side has a current row (or is done), emitting the changes
    /// of a finished batch.
    async fn fill(&mut self, new: bool) -> Result<()> {
        loop {
            let side = if new { &self.new } else { &self.old };
            if side.done || side.batch.as_ref().is_some_and(|b| side.pos < b.num_rows()) {
                return Ok(());
            }
            if side.batch.is_some() {
                self.emit(new).await?;
            }
            let side = if new { &mut self.new } else { &mut self.old };
            match side.stream.next().await {
                None => {
                    side.done = true;
                    side.batch = None;
                    side.keys = None;
                    side.hashes = None;
                    return Ok(());
                }
                Some(batch) => {
                    let batch = batch?;
                    let batch = if new {
                        batch
                    } else {
                        // The state's files have the source's columns, then snapshot_date.
                        let columns: Vec<usize> = (0..self.source_schema.fields().len()).collect();
                        let projected = batch
                            .project(&columns)
                            .map_err(|e| Error::capture(self.name, e))?;
                        conform(self.name, &self.source_schema, projected)?
                    };
                    let keys = batch
                        .column_by_name(KEY_COLUMN)
                        .expect("batches carry _key")
                        .as_binary::<i32>()
                        .clone();
                    let hashes = batch
                        .column_by_name(HASH_COLUMN)
                        .expect("batches carry _hash")
                        .as_primitive::<UInt64Type>()
                        .clone();
                    // Both sides must be sorted by key with unique keys for the join.
                    for i in 0..keys.len() {
                        let k = keys.value(i);
                        if let Some(prev) = &side.last_key {
                            if prev.as_slice() >= k {
                                return Err(Error::capture(
                                    self.name,
                                    format!("the {} snapshot is not sorted by key at row {i}; delete the table's {CURRENT_SUFFIX} folder to rebuild it", if new { "new" } else { "last" }),
                                ));
                            }
                        }
                        side.last_key = Some(k.to_vec());
                    }
                    side.ops = vec![0; batch.num_rows()];
                    side.pos = 0;
                    side.keys = Some(keys);
                    side.hashes = Some(hashes);
                    side.batch = Some(batch);
                }
            }
        }
    }

    /// Writes a finished batch: the new side to the state and its inserts and
    /// updates to the changes; the old side's deletes to the changes.
    async fn emit(&mut self, new: bool) -> Result<()> {
        let side = if new { &mut self.new } else { &mut self.old };
        let Some(batch) = side.batch.take() else {
            return Ok(());
        };
        let ops = std::mem::take(&mut side.ops);
        if new {
            self.counts.read += batch.num_rows() as u64;
            let day = Arc::new(Date32Array::from(vec![self.day; batch.num_rows()])) as ArrayRef;
            let all: Vec<usize> = (0..batch.num_columns()).collect();
            let state = append_columns(&self.state_schema, &batch, &all, vec![day])?;
            self.state_roller.write(&state).await?;
        }
        let mask = BooleanArray::from(ops.iter().map(|op| *op != 0).collect::<Vec<_>>());
        if mask.true_count() == 0 {
            return Ok(());
        }
        let changed =
            filter_record_batch(&batch, &mask).map_err(|e| Error::capture(self.name, e))?;
        let ops: Vec<u8> = ops.into_iter().filter(|op| *op != 0).collect();
        let n = ops.len();
        let extra: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(ops.iter().map(
                |op| match op {
                    1 => "insert",
                    2 => "update",
                    _ => "delete",
                },
            ))),
            Arc::new(Date32Array::from(vec![self.day; n])),
            Arc::new(UInt64Array::from(vec![self.version; n])),
            Arc::new(UInt8Array::from_iter_values(
                ops.iter().map(|op| u8::from(*op == 3)),
            )),
        ];
        let out = append_columns(&self.change_schema, &changed, &self.data, extra)?;
        self.change_roller.write(&out).await
    }
}

enum Step {
    Insert,
    Delete,
    Same,
}

/// Indices of the document columns of a source schema (all but `_key`, `_hash`).
pub(crate) fn data_columns(schema: &Schema) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() != KEY_COLUMN && f.name() != HASH_COLUMN)
        .map(|(i, _)| i)
        .collect()
}

/// The schema of `columns` of `schema` followed by `extra`.
pub(crate) fn with_columns(schema: &Schema, columns: &[usize], extra: &[Field]) -> SchemaRef {
    let mut fields: Vec<Field> = columns.iter().map(|i| schema.field(*i).clone()).collect();
    fields.extend(extra.iter().cloned());
    Arc::new(Schema::new(fields))
}

pub(crate) fn append_columns(
    schema: &SchemaRef,
    batch: &RecordBatch,
    columns: &[usize],
    extra: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let mut arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|i| Arc::clone(batch.column(*i)))
        .collect();
    arrays.extend(extra);
    RecordBatch::try_new(Arc::clone(schema), arrays).map_err(|e| Error::lake(e.to_string()))
}

pub(crate) fn column_names(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

fn join(base: &object_store::path::Path, relative: &str) -> object_store::path::Path {
    relative
        .split('/')
        .fold(base.clone(), |p, part| p.join(part))
}
