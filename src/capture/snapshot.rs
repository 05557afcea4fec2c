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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Date32Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use tracing::info;

use super::changes::{append_columns, change_schema, data_columns, with_columns};
use super::merge_join::{Counts, MergeJoin, Side};
use super::{
    Apply, Capture, CaptureContext, CaptureCounts, CaptureOutcome, Committed, LakeTable, Position,
    SchemaUpdate, TableChange,
};
use crate::config::{CaptureMode, MongoConfig, TableConfig};
use crate::error::{Error, Result};
use crate::lake::join;
use crate::lake::manifest::Manifest;
use crate::lake::writer::{day_string, parse_day, FileRoller};
use crate::lake::Lake;
use crate::progress::Stage;
use crate::source::mongo::{CollectionSource, ColumnType, DocumentSchema};
use crate::warehouse::LoadTarget;
use crate::warehouse::WarehouseTables;

/// Environment variable that sets the snapshot day instead of today (UTC).
pub const SNAPSHOT_DATE_ENV: &str = "SLUICE_SNAPSHOT_DATE";
pub use super::changes::{CHANGE_DATE, CURRENT_SUFFIX, IS_DELETED, OP, SNAPSHOT_DATE, VERSION};

/// Snapshot or snapshot-diff capture of one MongoDB collection (by the table's
/// `mode`).
pub struct Snapshot<'a> {
    pub table: &'a TableConfig,
    /// The table's MongoDB settings.
    pub mongo: &'a MongoConfig,
}

impl Snapshot<'_> {
    fn key(&self) -> Vec<String> {
        vec![self.table.key_fields().remove(0)]
    }

    fn state_name(&self) -> String {
        format!("{}{CURRENT_SUFFIX}", self.table.name)
    }
}

impl Capture for Snapshot<'_> {
    /// Snapshot: the table, by `snapshot_date`. Diff: the state (the last
    /// snapshots, by `snapshot_date`), then the change table (by `_change_date`),
    /// committed in that order.
    fn lake_tables(&self) -> Vec<LakeTable> {
        let table = |name: String, partition_column: &str| LakeTable {
            name,
            partition_column: partition_column.to_string(),
            key: self.key(),
        };
        match self.table.mode() {
            CaptureMode::SnapshotDiff => vec![
                table(self.state_name(), SNAPSHOT_DATE),
                table(self.table.name.clone(), CHANGE_DATE),
            ],
            _ => vec![table(self.table.name.clone(), SNAPSHOT_DATE)],
        }
    }

    fn warehouse_tables(&self) -> WarehouseTables {
        let key = self.key();
        match self.table.mode() {
            CaptureMode::SnapshotDiff => WarehouseTables {
                target: LoadTarget::changes(
                    &self.table.name,
                    CHANGE_DATE,
                    &key,
                    self.table.retention_days,
                ),
                current: Some(LoadTarget::current(
                    &self.state_name(),
                    CHANGE_DATE,
                    &key,
                    VERSION,
                    IS_DELETED,
                )),
            },
            _ => WarehouseTables {
                target: LoadTarget::for_table(self.table, SNAPSHOT_DATE, &key),
                current: None,
            },
        }
    }

    async fn capture(
        &self,
        ctx: &CaptureContext<'_>,
        committed: &Committed,
    ) -> Result<CaptureOutcome> {
        let table = self.table;
        ctx.progress.stage(Stage::Snapshot, None);
        for (lake_table, manifest) in self.lake_tables().iter().zip(&committed.manifests) {
            check_layout(lake_table, manifest)?;
        }
        let day = snapshot_day(&table.name)?;
        let source = &ctx.config.sources[&table.source];
        let collection = CollectionSource {
            url: source.url.clone(),
            collection: self.mongo.collection.clone(),
        };
        let run = SnapshotRun {
            table,
            mongo: self.mongo,
            lake: ctx.lake,
            run_id: ctx.run_id,
            day,
        };
        let loaded = committed.manifests.iter().any(|m| m.version > 0);
        let schema = run.document_schema(&collection, loaded).await?;
        info!(day = %day_string(day), collection = %collection.collection, "Snapshot started.");
        // The diff merge-joins the collection in key order: one cursor. A snapshot
        // may read key ranges at once (`read_parallelism`).
        let stream = match table.mode() {
            CaptureMode::Snapshot => {
                collection
                    .read_parallel(
                        &table.name,
                        schema,
                        table.batch_rows,
                        self.mongo.read_parallelism,
                    )
                    .await?
            }
            _ => {
                collection
                    .read(&table.name, schema, table.batch_rows)
                    .await?
            }
        };
        match table.mode() {
            CaptureMode::SnapshotDiff => {
                let (state, changes) = (&committed.manifests[0], &committed.manifests[1]);
                run.snapshot_diff(stream, state, changes).await
            }
            _ => run.snapshot(stream, &committed.manifests[0]).await,
        }
    }
}

/// Refuses a lake table made by another kind of capture (another partition
/// column or key).
fn check_layout(table: &LakeTable, m: &Manifest) -> Result<()> {
    if m.partition_column == table.partition_column && m.key == table.key {
        return Ok(());
    }
    Err(Error::capture(
        &table.name,
        format!(
            "the lake's table was built with partition column {:?} and key {:?}; this run needs {:?} and {:?} (mode or key changed: delete the table's folder to rebuild it)",
            m.partition_column, m.key, table.partition_column, table.key
        ),
    ))
}

/// The table's document schema (see `SnapshotRun::document_schema`): the one kept
/// in the lake once `table` has a manifest, otherwise inferred from the config and
/// a sample of the collection, and stored.
pub(crate) async fn document_schema(
    table: &TableConfig,
    mongo: &MongoConfig,
    lake: &Lake,
    collection: &CollectionSource,
    committed: bool,
) -> Result<DocumentSchema> {
    let run = SnapshotRun {
        table,
        mongo,
        lake,
        run_id: "",
        day: 0,
    };
    run.document_schema(collection, committed).await
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
        Err(_) => Ok(crate::lake::writer::today()),
    }
}

struct SnapshotRun<'a> {
    table: &'a TableConfig,
    mongo: &'a MongoConfig,
    lake: &'a Lake,
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

    /// `committed`: the table has been committed before (its schema is kept).
    async fn document_schema(
        &self,
        collection: &CollectionSource,
        committed: bool,
    ) -> Result<DocumentSchema> {
        let name = self.name();
        let path = self.lake.path(&self.schema_path());
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
            .mongo
            .columns
            .iter()
            .map(|(n, t)| (n.clone(), ColumnType::parse(t).expect("validated")))
            .collect();
        let sample = collection.sample(name, self.mongo.infer_sample).await?;
        let schema = DocumentSchema::infer(
            sample.iter().map(|d| d.as_ref()),
            &declared,
            self.mongo.nested,
            self.mongo.on_mismatch,
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

    fn roller(&self, table: &str, column: &str, schema: &SchemaRef, seq: usize) -> FileRoller {
        let rel = crate::lake::delta::partition_folder(column, &day_string(self.day));
        let dir = self.lake.path(&format!("{table}/{rel}"));
        FileRoller::new(
            self.lake,
            dir,
            rel,
            &format!("{}-{seq}", self.run_id),
            Arc::clone(schema),
        )
    }

    /// Snapshot mode: the collection into the day's partition, replacing it;
    /// snapshots older than `retention_days` leave the lake.
    async fn snapshot(
        &self,
        stream: crate::source::BatchStream,
        committed: &Manifest,
    ) -> Result<CaptureOutcome> {
        let name = self.name().to_string();
        let data_columns = data_columns(&stream.schema);
        let schema = with_columns(
            &stream.schema,
            &data_columns,
            &[Field::new(SNAPSHOT_DATE, DataType::Date32, false)],
        );
        let stage = Instant::now();
        let mut counts = CaptureCounts::default();
        let mut roller = self.roller(&name, SNAPSHOT_DATE, &schema, 0);
        let mut batches = stream.batches;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            counts.rows_read += batch.num_rows() as u64;
            let day = Arc::new(Date32Array::from(vec![self.day; batch.num_rows()])) as ArrayRef;
            let out = append_columns(&schema, &batch, &data_columns, vec![day])?;
            roller.write(&out).await?;
        }
        let files = roller.finish().await?;
        counts.rows_changed = counts.rows_read;
        counts.extract_seconds = stage.elapsed().as_secs_f64();
        info!(rows = counts.rows_read, "Snapshot written.");

        // Lake retention follows the warehouse's: snapshots older than
        // `retention_days` leave the manifest (their files are deleted after it).
        let drop_days = match self.table.retention_days {
            Some(days) => {
                let oldest = self.day - days as i32;
                committed
                    .partitions
                    .keys()
                    .filter(|d| parse_day(d).is_some_and(|d| d < oldest))
                    .cloned()
                    .collect()
            }
            None => BTreeSet::new(),
        };
        Ok(CaptureOutcome {
            changes: vec![TableChange {
                apply: Apply::ReplaceDays {
                    days: BTreeMap::from([(day_string(self.day), files)]),
                    drop_days,
                },
                schema: SchemaUpdate::Set(Arc::clone(&schema)),
                load: true,
                key_prints: BTreeMap::new(),
            }],
            schema,
            today: self.day,
            position: Position::Keep,
            rebuild_warehouse: false,
            counts,
            position_before: None,
            position_after: None,
            warnings: Vec::new(),
        })
    }

    /// Snapshot-diff mode: see the module documentation.
    async fn snapshot_diff(
        &self,
        stream: crate::source::BatchStream,
        state: &Manifest,
        changes: &Manifest,
    ) -> Result<CaptureOutcome> {
        let stage = Instant::now();
        let name = self.name().to_string();
        let state_name = format!("{name}{CURRENT_SUFFIX}");
        if changes.change_stream.is_some() {
            // Its versions are cluster times: a day's diff (YYYYMMDD) would lose to them.
            return Err(Error::capture(
                &name,
                format!("the lake's change table was made by change_stream capture; start it over with `sluice state reset --table {name}` (or `sluice run --full-refresh --table {name}`) to diff snapshots"),
            ));
        }
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
        let change_schema = change_schema(&stream.schema, &data);
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
        info!(
            inserts = counts.inserts,
            updates = counts.updates,
            deletes = counts.deletes,
            base = ?base.as_ref().map(|(d, _)| d),
            "Snapshot diff computed."
        );
        let changed = counts.inserts + counts.updates + counts.deletes;
        // The state keeps today's snapshot and the base; older ones go.
        let keep_base = base.as_ref().map(|(d, _)| d.clone());
        let drop_days: BTreeSet<String> = state
            .partitions
            .keys()
            .filter(|d| Some(*d) != keep_base.as_ref() && **d != day_name)
            .cloned()
            .collect();
        Ok(CaptureOutcome {
            changes: vec![
                TableChange {
                    apply: Apply::ReplaceDays {
                        days: BTreeMap::from([(day_name.clone(), state_files)]),
                        drop_days,
                    },
                    schema: SchemaUpdate::Set(state_schema),
                    load: false,
                    key_prints: BTreeMap::new(),
                },
                // The change set of the day (possibly empty).
                TableChange {
                    apply: Apply::ReplaceDays {
                        days: BTreeMap::from([(day_name, change_files)]),
                        drop_days: BTreeSet::new(),
                    },
                    schema: SchemaUpdate::Set(Arc::clone(&change_schema)),
                    load: true,
                    key_prints: BTreeMap::new(),
                },
            ],
            schema: change_schema,
            today: self.day,
            position: Position::Keep,
            rebuild_warehouse: false,
            counts: CaptureCounts {
                rows_read: counts.read,
                rows_changed: changed,
                extract_seconds: stage.elapsed().as_secs_f64(),
                ..Default::default()
            },
            position_before: None,
            position_after: None,
            warnings: Vec::new(),
        })
    }
}
