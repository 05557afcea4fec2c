//! Change-stream capture for MongoDB collections (`mode = "change_stream"`).
//!
//! A run is a micro-batch over the collection's change stream:
//!
//! 1. **First run** (no stored position): the server's cluster time `T0` is read,
//!    then the whole collection is snapshotted into the change table as `insert`
//!    rows with the `_version` of `T0`, and the stream is read from right after
//!    `T0` (step 2); the snapshot, the events and the position after them are
//!    committed together. Changes made while the snapshot is read are not lost:
//!    the stream starts right after `T0`, before the snapshot's reads, and its
//!    events replay over the snapshot with higher versions (applied by key,
//!    latest wins).
//! 2. **Every run** (the first one too, right after its snapshot): the stream is
//!    opened after the stored resume token (or at `T0`) with
//!    `fullDocument: "updateLookup"` and read batch by batch until it is caught up
//!    (an empty getMore) or reaches an event later than the cluster time read at
//!    the start of the stream phase, so a busy collection cannot keep a run going
//!    forever. Events become change rows in the same format as `snapshot_diff`:
//!    the document's columns plus `_op` (`insert`, `update` for updates and
//!    replaces, `delete`), `_change_date` (the event's UTC day), `_version` (the
//!    event's cluster time and, for changes of one key within one transaction,
//!    their order: see [`ClusterTime::version`]; it grows across runs) and
//!    `_is_deleted`. A delete carries only `_id`; an update whose document is
//!    gone by the time it is looked up (deleted later) is skipped, since the
//!    delete that follows it says the final word.
//!
//! **Commit.** The new Parquet files are appended to their days' partitions and
//! the new resume token is written in the same manifest PUT: the lake shows the
//! rows and the position that follows them together, or neither. A crash before
//! that PUT leaves orphan files (deleted by the next run, which reads the same
//! events again); a crash after it leaves the touched days in
//! `pending_warehouse`, which the next run loads into ClickHouse
//! (`REPLACE PARTITION`, so a repeated load does not duplicate).
//!
//! **ClickHouse.** `<table>` holds every change row (MergeTree, `retention_days`
//! TTL); `<table>_current` holds the same rows (copied partition by partition
//! from `<table>` once loaded) in a `ReplacingMergeTree(_version, _is_deleted)`
//! without TTL, so `SELECT … FINAL` is the current state. A first run (also after
//! `state reset`) drops and reloads both, so keys deleted while the position was
//! lost do not linger.
//!
//! **Memory.** At most `batch_rows` events or 32 MiB of BSON are decoded at a time,
//! plus the Parquet writer's row group; the backlog is never held whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Date32Array, StringArray, UInt64Array, UInt8Array};
use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use mongodb::bson::raw::RawDocumentBuf;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::options::FullDocumentType;
use tracing::info;

use super::changes::{
    append_columns, change_schema, data_columns, CHANGE_DATE, CURRENT_SUFFIX, IS_DELETED, VERSION,
};
use super::resume::{reset_advice, stored_token, stream_error, token_json, token_time};
use super::snapshot::document_schema;
use super::{
    Apply, Capture, CaptureContext, CaptureCounts, CaptureOutcome, Committed, LakeTable, Position,
    SchemaUpdate, TableChange,
};
use crate::capture::position::{ClusterTime, StreamPosition};
use crate::config::{MongoConfig, TableConfig};
use crate::error::{chain, Error, Result};
use crate::fault;
use crate::lake::manifest::{FileEntry, Manifest};
use crate::lake::writer::{day_string, FileRoller};
use crate::lake::Lake;
use crate::progress::Stage;
use crate::source::mongo::{sort_key, CollectionSource, Decoder, DocumentSchema, BATCH_BYTES};
use crate::warehouse::LoadTarget;
use crate::warehouse::WarehouseTables;

/// How long one getMore waits for new events before answering with an empty
/// batch, which ends the run ("caught up").
const AWAIT: Duration = Duration::from_millis(500);
/// How long empty batches that keep moving the resume token are read before a
/// run stops following the stream (when the token's time cannot be read).
const MAX_QUIET: Duration = Duration::from_secs(30);

/// Change-stream capture of one MongoDB collection.
pub struct ChangeStream<'a> {
    pub table: &'a TableConfig,
    /// The table's MongoDB settings.
    pub mongo: &'a MongoConfig,
}

impl Capture for ChangeStream<'_> {
    fn lake_tables(&self) -> Vec<LakeTable> {
        vec![LakeTable {
            name: self.table.name.clone(),
            partition_column: CHANGE_DATE.to_string(),
            key: vec!["_id".to_string()],
        }]
    }

    fn warehouse_tables(&self) -> WarehouseTables {
        let name = &self.table.name;
        let key = ["_id".to_string()];
        WarehouseTables {
            target: LoadTarget::changes(name, CHANGE_DATE, &key, self.table.retention_days),
            current: Some(LoadTarget::current(
                &format!("{name}{CURRENT_SUFFIX}"),
                CHANGE_DATE,
                &key,
                VERSION,
                IS_DELETED,
            )),
        }
    }

    async fn capture(
        &self,
        ctx: &CaptureContext<'_>,
        committed: &Committed,
    ) -> Result<CaptureOutcome> {
        let table = self.table;
        ctx.progress.stage(Stage::Snapshot, None);
        let source = &ctx.config.sources[&table.source];
        let collection = CollectionSource {
            url: source.url.clone(),
            collection: self.mongo.collection.clone(),
        };
        let client = mongodb::Client::with_uri_str(&source.url)
            .await
            .map_err(|e| Error::source(&table.name, chain(&e)))?;
        let db = client.default_database().ok_or_else(|| {
            Error::source(
                &table.name,
                "the MongoDB source URL names no database (mongodb://host:27017/DATABASE)",
            )
        })?;
        let mut run = StreamRun {
            table,
            mongo: self.mongo,
            lake: ctx.lake,
            run_id: ctx.run_id,
            db,
            collection,
            rollers: 0,
            days: BTreeMap::new(),
            counts: CaptureCounts::default(),
        };
        run.run(&committed.manifests[0]).await
    }
}

struct StreamRun<'a> {
    table: &'a TableConfig,
    mongo: &'a MongoConfig,
    lake: &'a Lake,
    run_id: &'a str,
    db: mongodb::Database,
    collection: CollectionSource,
    /// Rollers opened so far (their sequence numbers keep file names unique).
    rollers: usize,
    /// The change files written, by day.
    days: BTreeMap<String, Vec<FileEntry>>,
    counts: CaptureCounts,
}

/// Change rows of one day, written as they arrive.
struct DayWriter {
    day: i32,
    roller: FileRoller,
}

/// The change rows decoded but not yet written, all of one day.
struct Pending {
    decoder: Decoder,
    ops: Vec<u8>,
    versions: Vec<u64>,
    day: Option<i32>,
}

const INSERT: u8 = 1;
const UPDATE: u8 = 2;
const DELETE: u8 = 3;

impl StreamRun<'_> {
    fn name(&self) -> &str {
        &self.table.name
    }

    async fn run(&mut self, manifest: &Manifest) -> Result<CaptureOutcome> {
        let started = Instant::now();
        let name = self.name().to_string();
        if manifest.partition_column != CHANGE_DATE || manifest.key != ["_id"] {
            return Err(Error::capture(
                &name,
                format!(
                    "the lake's table was built with partition column {:?} and key {:?}, not by change_stream capture; {}",
                    manifest.partition_column,
                    manifest.key,
                    reset_advice(&name)
                ),
            ));
        }
        if manifest.change_stream.is_none() && !manifest.partitions.is_empty() {
            return Err(Error::capture(
                &name,
                format!(
                    "the lake's change table has rows but no change-stream position (it was made by snapshot_diff capture); {}",
                    reset_advice(&name)
                ),
            ));
        }
        let schema = document_schema(
            self.table,
            self.mongo,
            self.lake,
            &self.collection,
            manifest.version > 0,
        )
        .await?;
        let source_schema = schema.arrow_schema();
        let data = data_columns(&source_schema);
        let change_schema = change_schema(&source_schema, &data);
        let columns = ChangeColumns {
            schema: Arc::clone(&change_schema),
            data,
        };
        // First run (or after a reset): the snapshot, then the stream from its
        // cluster time; both are committed together, with the position after them.
        let first = manifest.change_stream.is_none();
        let position = match &manifest.change_stream {
            Some(position) => position.clone(),
            None => {
                let position = self.snapshot(&schema, &columns).await?;
                fault::point("change_stream.after_snapshot");
                position
            }
        };
        let next_position = self.follow(&position, &schema, &columns).await?;
        self.counts.extract_seconds = started.elapsed().as_secs_f64();
        Ok(CaptureOutcome {
            changes: vec![TableChange {
                apply: Apply::Append(std::mem::take(&mut self.days)),
                schema: if first {
                    SchemaUpdate::Record(Arc::clone(&change_schema))
                } else {
                    SchemaUpdate::Keep
                },
                load: true,
                key_prints: BTreeMap::new(),
            }],
            schema: change_schema,
            today: crate::lake::writer::today(),
            position_before: Some(position.covered_until.to_string()),
            position_after: Some(next_position.covered_until.to_string()),
            position: Position::Stream(next_position),
            // After a reset the ClickHouse tables may hold keys deleted since: rebuild.
            rebuild_warehouse: first,
            counts: std::mem::take(&mut self.counts),
            warnings: Vec::new(),
        })
    }

    /// The server's current cluster time (`operationTime` of a `hello`).
    async fn cluster_time(&self) -> Result<ClusterTime> {
        let reply = self
            .db
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| Error::source(self.name(), chain(&e)))?;
        match reply.get("operationTime") {
            Some(Bson::Timestamp(ts)) => Ok(ClusterTime::from_bson(*ts)),
            _ => Err(Error::source(
                self.name(),
                "the server reports no cluster time: change streams need a replica set or a sharded cluster (a single server can run as a one-member replica set)",
            )),
        }
    }

    /// First run: the whole collection as `insert` rows, versioned with the
    /// cluster time read before it; the position "start after T0".
    async fn snapshot(
        &mut self,
        schema: &DocumentSchema,
        columns: &ChangeColumns,
    ) -> Result<StreamPosition> {
        let t0 = self.cluster_time().await?;
        let version = t0.version(0);
        let day = t0.day();
        info!(cluster_time = %t0, collection = %self.collection.collection, "Initial snapshot started.");
        let mut stream = self
            .collection
            .read(self.name(), schema.clone(), self.table.batch_rows)
            .await?;
        let mut writer = self.open_day(day, &columns.schema);
        let mut rows = 0u64;
        while let Some(batch) = stream.batches.next().await {
            let batch = batch?;
            let n = batch.num_rows();
            let extra = columns.extra(&vec![INSERT; n], &vec![version; n], day);
            let out = append_columns(&columns.schema, &batch, &columns.data, extra)?;
            writer.roller.write(&out).await?;
            rows += n as u64;
        }
        let files = writer.roller.finish().await?;
        self.counts.rows_read += rows;
        self.counts.rows_changed += rows;
        self.add_files(day, files);
        info!(rows, "Initial snapshot written.");
        Ok(StreamPosition {
            resume_token: None,
            snapshot_time: t0,
            covered_until: t0,
            events: 0,
        })
    }

    /// Reads the change stream from `position` until caught up; returns the
    /// position after the change rows written.
    async fn follow(
        &mut self,
        position: &StreamPosition,
        schema: &DocumentSchema,
        columns: &ChangeColumns,
    ) -> Result<StreamPosition> {
        let name = self.name().to_string();
        let position = position.clone();
        let token = stored_token(&position, &name)?;
        // Events after this belong to the next run.
        let until = self.cluster_time().await?;
        let coll = self
            .db
            .collection::<RawDocumentBuf>(&self.collection.collection);
        let watch = coll
            .watch()
            .full_document(FullDocumentType::UpdateLookup)
            .batch_size(self.table.batch_rows.min(10_000) as u32)
            .max_await_time(AWAIT);
        let watch = match &token {
            Some(token) => watch.resume_after(token.clone()),
            // The snapshot saw every change at or before its cluster time.
            None => watch.start_at_operation_time(position.snapshot_time.next().to_bson()),
        };
        info!(from = %position.covered_until, until = %until, "Change stream opened.");
        let mut stream = watch.await.map_err(|e| stream_error(&name, &position, e))?;

        let mut pending = Pending {
            decoder: Decoder::new(schema.clone(), &self.collection.collection),
            ops: Vec::new(),
            versions: Vec::new(),
            day: None,
        };
        let mut writer: Option<DayWriter> = None;
        let mut files: Vec<(i32, Vec<FileEntry>)> = Vec::new();
        let mut last_token: Option<ResumeToken> = None;
        let mut covered = position.covered_until;
        let mut events = 0u64;
        let mut skipped = 0u64;
        let mut same_time: (ClusterTime, HashMap<Vec<u8>, u32>) = (covered, HashMap::new());
        let mut quiet_since: Option<std::time::Instant> = None;
        let caught_up = loop {
            let before = stream.resume_token();
            let event: Option<ChangeStreamEvent<RawDocumentBuf>> = stream
                .next_if_any()
                .await
                .map_err(|e| stream_error(&name, &position, e))?;
            let Some(event) = event else {
                // An empty batch alone is not the end: a server that scanned only
                // part of the oplog (other collections' entries) answers with no
                // events and a moved postBatchResumeToken. Caught up is an empty
                // batch that did not move it, or a token at or past `until`.
                let after = stream.resume_token();
                if after == before || after.as_ref().and_then(token_time) >= Some(until) {
                    break true;
                }
                let since = *quiet_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= MAX_QUIET {
                    // A busy server whose tokens sluice cannot read the time of:
                    // stop here; the token is past everything read.
                    break false;
                }
                continue;
            };
            quiet_since = None;
            let time = event
                .cluster_time
                .map(ClusterTime::from_bson)
                .ok_or_else(|| Error::source(&name, "a change event has no clusterTime"))?;
            if time > until {
                break false;
            }
            let (op, doc) = match event.operation_type {
                OperationType::Insert => (INSERT, event.full_document),
                OperationType::Update | OperationType::Replace => (UPDATE, event.full_document),
                OperationType::Delete => {
                    let id = event
                        .document_key
                        .as_ref()
                        .and_then(|k| k.get("_id"))
                        .ok_or_else(|| {
                            Error::source(&name, "a delete event has no documentKey._id")
                        })?;
                    let mut key = Document::new();
                    key.insert("_id", id.clone());
                    let raw =
                        RawDocumentBuf::from_document(&key).map_err(|e| Error::source(&name, e))?;
                    (DELETE, Some(raw))
                }
                OperationType::Drop
                | OperationType::Rename
                | OperationType::DropDatabase
                | OperationType::Invalidate => {
                    return Err(Error::capture(
                        &name,
                        format!(
                            "the collection was dropped or renamed (change event {:?} at {time}); nothing after the last run was committed; {}",
                            event.operation_type,
                            reset_advice(&name)
                        ),
                    ));
                }
                // DDL and other events (shown only with showExpandedEvents) carry no rows.
                _ => (0, None),
            };
            last_token = Some(event.id);
            covered = time;
            events += 1;
            let Some(doc) = doc else {
                if op == UPDATE {
                    // Looked up after the document was deleted: the delete follows.
                    skipped += 1;
                }
                continue;
            };
            if pending.day.is_some_and(|d| d != time.day()) {
                self.flush(&mut pending, &mut writer, &mut files, columns)
                    .await?;
            }
            pending.day = Some(time.day());
            pending
                .decoder
                .append(&doc)
                .map_err(|e| Error::source(&name, e))?;
            pending.ops.push(op);
            // Changes of one key at the same cluster time (one transaction).
            if same_time.0 != time {
                same_time = (time, HashMap::new());
            }
            let ordinal = same_time.1.entry(key_bytes(&doc)).or_insert(0);
            pending.versions.push(time.version(*ordinal));
            *ordinal += 1;
            if pending.decoder.rows() >= self.table.batch_rows
                || pending.decoder.bytes() >= BATCH_BYTES
            {
                self.flush(&mut pending, &mut writer, &mut files, columns)
                    .await?;
            }
        };
        self.flush(&mut pending, &mut writer, &mut files, columns)
            .await?;
        if let Some(w) = writer.take() {
            files.push((w.day, w.roller.finish().await?));
        }
        // Caught up: the stream's own token (the postBatchResumeToken) is past
        // every event up to now, including other collections' (so a quiet
        // collection's token keeps up with the oplog).
        if caught_up {
            covered = covered.max(until);
        }
        // Stopped on empty batches (caught up or not): the stream's token is past
        // every event seen, and no event was read beyond it. Stopped on an event
        // after `until`: resume right before that event.
        let new_token = if caught_up || quiet_since.is_some() {
            stream.resume_token().or(last_token)
        } else {
            last_token
        };
        let rows: u64 = files
            .iter()
            .flat_map(|(_, f)| f.iter().map(|f| f.rows))
            .sum();
        self.counts.rows_read += events;
        self.counts.rows_changed += rows;
        self.counts.rows_skipped += skipped;
        info!(events, rows, skipped, caught_up, "Change stream read.");

        let new_token = match &new_token {
            Some(t) => Some(token_json(t)?),
            None => position.resume_token.clone(),
        };
        for (day, day_files) in files {
            self.add_files(day, day_files);
        }
        Ok(StreamPosition {
            resume_token: new_token,
            snapshot_time: position.snapshot_time,
            covered_until: covered,
            events: position.events + events,
        })
    }

    /// Writes the decoded rows to their day's files.
    async fn flush(
        &mut self,
        pending: &mut Pending,
        writer: &mut Option<DayWriter>,
        files: &mut Vec<(i32, Vec<FileEntry>)>,
        columns: &ChangeColumns,
    ) -> Result<()> {
        let Some(day) = pending.day else {
            return Ok(());
        };
        if pending.decoder.rows() == 0 {
            return Ok(());
        }
        let batch = pending
            .decoder
            .flush()
            .map_err(|e| Error::source(self.name(), e))?;
        let extra = columns.extra(&pending.ops, &pending.versions, day);
        pending.ops.clear();
        pending.versions.clear();
        let out = append_columns(&columns.schema, &batch, &columns.data, extra)?;
        if writer.as_ref().is_some_and(|w| w.day != day) {
            let w = writer.take().expect("checked");
            files.push((w.day, w.roller.finish().await?));
        }
        let w = match writer {
            Some(w) => w,
            None => writer.insert(self.open_day(day, &columns.schema)),
        };
        w.roller.write(&out).await?;
        fault::point("change_stream.batch");
        Ok(())
    }

    fn open_day(&mut self, day: i32, schema: &SchemaRef) -> DayWriter {
        let rel = crate::lake::delta::partition_folder(CHANGE_DATE, &day_string(day));
        let dir = self.lake.path(&format!("{}/{rel}", self.name()));
        let roller = FileRoller::new(
            self.lake,
            dir,
            rel,
            &format!("{}-{}", self.run_id, self.rollers),
            Arc::clone(schema),
        );
        self.rollers += 1;
        DayWriter { day, roller }
    }

    /// Adds files to a day's change files (change rows are only ever added).
    fn add_files(&mut self, day: i32, files: Vec<FileEntry>) {
        if !files.is_empty() {
            self.days.entry(day_string(day)).or_default().extend(files);
        }
    }
}

/// A document's `_id` as comparable bytes (empty when it has none or a type
/// sluice does not order: the decoder rejects such a document).
fn key_bytes(doc: &RawDocumentBuf) -> Vec<u8> {
    match doc.get("_id") {
        Ok(Some(id)) => sort_key(id).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The change table's schema and where the document columns are in a decoded batch.
struct ChangeColumns {
    schema: SchemaRef,
    /// Indices of the document columns (without `_key`, `_hash`).
    data: Vec<usize>,
}

impl ChangeColumns {
    /// `_op`, `_change_date`, `_version`, `_is_deleted` for rows of one day.
    fn extra(&self, ops: &[u8], versions: &[u64], day: i32) -> Vec<ArrayRef> {
        vec![
            Arc::new(StringArray::from_iter_values(ops.iter().map(
                |op| match *op {
                    INSERT => "insert",
                    UPDATE => "update",
                    _ => "delete",
                },
            ))),
            Arc::new(Date32Array::from(vec![day; ops.len()])),
            Arc::new(UInt64Array::from(versions.to_vec())),
            Arc::new(UInt8Array::from_iter_values(
                ops.iter().map(|op| u8::from(*op == DELETE)),
            )),
        ]
    }
}
