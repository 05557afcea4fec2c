//! Change-stream capture for MongoDB collections (`mode = "change_stream"`).
//!
//! A run is a micro-batch over the collection's change stream:
//!
//! 1. **First run** (no stored position): the server's cluster time `T0` is read,
//!    then the whole collection is snapshotted into the change table as `insert`
//!    rows with the `_version` of `T0`. The position "start after `T0`" is
//!    committed with them. Changes made while the snapshot is read are not lost:
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Date32Array, StringArray, UInt64Array, UInt8Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use futures::StreamExt;
use mongodb::bson::raw::RawDocumentBuf;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::options::FullDocumentType;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::capture::snapshot::{
    append_columns, column_names, data_columns, document_schema, with_columns, CHANGE_DATE,
    CURRENT_SUFFIX, IS_DELETED, OP, VERSION,
};
use crate::config::{Config, TableConfig};
use crate::error::{chain, Error, Result};
use crate::fault;
use crate::lake::manifest::{FileEntry, Manifest};
use crate::lake::writer::{day_string, FileRoller};
use crate::lake::Lake;
use crate::run::TableReport;
use crate::source::mongo::{sort_key, CollectionSource, Decoder, DocumentSchema, BATCH_BYTES};
use crate::warehouse::Warehouse;

/// How long one getMore waits for new events before answering with an empty
/// batch, which ends the run ("caught up").
const AWAIT: Duration = Duration::from_millis(500);
/// How long empty batches that keep moving the resume token are read before a
/// run stops following the stream (when the token's time cannot be read).
const MAX_QUIET: Duration = Duration::from_secs(30);

/// A MongoDB cluster time (a BSON timestamp): seconds and an ordinal within the
/// second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterTime {
    /// Seconds since the Unix epoch.
    pub t: u32,
    /// Ordinal of the operation within that second.
    pub i: u32,
}

impl ClusterTime {
    fn from_bson(ts: Timestamp) -> Self {
        Self {
            t: ts.time,
            i: ts.increment,
        }
    }

    fn to_bson(self) -> Timestamp {
        Timestamp {
            time: self.t,
            increment: self.i,
        }
    }

    /// The cluster time right after this one: where a stream starts so as not to
    /// replay the changes at this time.
    fn next(self) -> Self {
        match self.i.checked_add(1) {
            Some(i) => Self { t: self.t, i },
            None => Self {
                t: self.t + 1,
                i: 0,
            },
        }
    }

    /// The `_version` of the `ordinal`-th change of one key at this time: grows
    /// with the cluster time, so ReplacingMergeTree keeps the latest change of a
    /// key across runs. Seconds take the high 32 bits, the increment the next 24
    /// (16 million operations per second), and the ordinal the low 8: the changes
    /// of one transaction share a cluster time, so a key changed twice in one
    /// transaction is told apart by its order in the stream.
    pub fn version(self, ordinal: u32) -> u64 {
        (u64::from(self.t) << 32)
            | (u64::from(self.i.min((1 << 24) - 1)) << 8)
            | u64::from(ordinal.min(255))
    }

    /// The UTC day, as days since the epoch (the `_change_date` partition).
    pub fn day(self) -> i32 {
        (i64::from(self.t) / 86_400) as i32
    }
}

impl std::fmt::Display for ClusterTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = chrono::DateTime::from_timestamp(i64::from(self.t), 0)
            .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "?".into());
        write!(f, "Timestamp({}, {}) = {when}", self.t, self.i)
    }
}

/// Where a `change_stream` table's next run resumes, kept in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The change stream's resume token (`{"_data": …}`, relaxed Extended JSON),
    /// opaque to sluice. `None` until the stream has been read once after the
    /// first snapshot: the stream then starts at `snapshot_time`.
    #[serde(default)]
    pub resume_token: Option<serde_json::Value>,
    /// The cluster time read just before the first snapshot.
    pub snapshot_time: ClusterTime,
    /// Every change at or before this cluster time is in the lake.
    pub covered_until: ClusterTime,
    /// Change events committed since the snapshot.
    #[serde(default)]
    pub events: u64,
}

impl StreamPosition {
    /// One line for `state show` and `--dry-run`.
    pub fn describe(&self) -> String {
        format!(
            "{}; changes up to cluster time {} are in the lake ({} event(s) since the snapshot of {})",
            if self.resume_token.is_some() {
                "resumes after the stored resume token"
            } else {
                "starts right after the snapshot's cluster time (no resume token yet)"
            },
            self.covered_until,
            self.events,
            self.snapshot_time
        )
    }

    fn token(&self, table: &str) -> Result<Option<ResumeToken>> {
        let Some(json) = &self.resume_token else {
            return Ok(None);
        };
        let bson = Bson::try_from(json.clone()).map_err(|e| {
            Error::capture(
                table,
                format!("the stored resume token is not Extended JSON: {e}"),
            )
        })?;
        mongodb::bson::from_bson(bson).map(Some).map_err(|e| {
            Error::capture(
                table,
                format!("the stored resume token is not a resume token: {e}"),
            )
        })
    }
}

/// The cluster time in a MongoDB resume token: its `_data` is a KeyString that
/// starts with type byte 0x82 and the timestamp (seconds, then increment, both
/// big-endian). `None` for tokens of another shape (SecantusDB's are hex BSON,
/// whose time is minted when the token is, not the oplog position's).
fn token_time(token: &ResumeToken) -> Option<ClusterTime> {
    let bson = mongodb::bson::to_bson(token).ok()?;
    let data = bson.as_document()?.get_str("_data").ok()?;
    let hex = data.get(..18)?;
    if !hex.is_ascii() || !hex[..2].eq_ignore_ascii_case("82") {
        return None;
    }
    let t = u32::from_str_radix(&hex[2..10], 16).ok()?;
    let i = u32::from_str_radix(&hex[10..18], 16).ok()?;
    Some(ClusterTime { t, i })
}

fn token_json(token: &ResumeToken) -> Result<serde_json::Value> {
    let bson = mongodb::bson::to_bson(token)
        .map_err(|e| Error::lake(format!("encoding a resume token: {e}")))?;
    Ok(bson.into_relaxed_extjson())
}

/// The advice given whenever the stored position cannot be used.
fn reset_advice(table: &str) -> String {
    format!(
        "re-snapshot the collection with `sluice state reset --table {table}` then `sluice run`, or `sluice run --full-refresh --table {table}`"
    )
}

/// A driver error, made actionable when it means the stored position is gone.
fn stream_error(table: &str, position: &StreamPosition, e: mongodb::error::Error) -> Error {
    if let mongodb::error::ErrorKind::Command(c) = e.kind.as_ref() {
        // 286 ChangeStreamHistoryLost, 280 ChangeStreamFatalError (older servers),
        // 260 InvalidResumeToken; 9 FailedToParse about the token.
        let lost = matches!(c.code, 280 | 286 | 260)
            || (c.code == 9 && c.message.to_lowercase().contains("resume token"));
        if lost {
            return Error::capture(
                table,
                format!(
                    "the change stream cannot resume from the stored position ({}): {} (code {} {}). The oplog no longer holds the changes since then: its retention must be longer than the time between runs (and than a first snapshot). To start over, {}.",
                    position.covered_until,
                    c.message,
                    c.code,
                    c.code_name,
                    reset_advice(table)
                ),
            );
        }
        // 40573: "The $changeStream stage is only supported on replica sets".
        if c.code == 40573 {
            return Error::source(
                table,
                format!(
                    "change streams need a replica set or a sharded cluster (a single server can run as a one-member replica set): {}",
                    c.message
                ),
            );
        }
    }
    Error::source(table, chain(&e))
}

/// Runs one MongoDB table in `change_stream` mode.
pub async fn run_table(
    config: &Config,
    table: &TableConfig,
    lake: &Lake,
    warehouse: Option<&Warehouse>,
    run_id: &str,
) -> Result<TableReport> {
    let started = Instant::now();
    let source = &config.sources[&table.source];
    let collection = CollectionSource {
        url: source.url.clone(),
        collection: table.collection.clone().unwrap_or_default(),
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
        lake,
        warehouse,
        run_id,
        db,
        collection,
        rollers: 0,
        report: TableReport {
            table: table.name.clone(),
            ..Default::default()
        },
    };
    run.run().await?;
    let mut report = run.report;
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

struct StreamRun<'a> {
    table: &'a TableConfig,
    lake: &'a Lake,
    warehouse: Option<&'a Warehouse>,
    run_id: &'a str,
    db: mongodb::Database,
    collection: CollectionSource,
    /// Rollers opened so far (their sequence numbers keep file names unique).
    rollers: usize,
    report: TableReport,
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

    async fn run(&mut self) -> Result<()> {
        let name = self.name().to_string();
        let manifest = match self.lake.read_manifest(&name).await? {
            Some(m) if m.partition_column == CHANGE_DATE && m.key == ["_id"] => m,
            Some(m) => {
                return Err(Error::capture(
                    &name,
                    format!(
                        "the lake's table was built with partition column {:?} and key {:?}, not by change_stream capture; {}",
                        m.partition_column,
                        m.key,
                        reset_advice(&name)
                    ),
                ))
            }
            None => Manifest::new(&name, CHANGE_DATE, &["_id".to_string()]),
        };
        if manifest.change_stream.is_none() && !manifest.partitions.is_empty() {
            return Err(Error::capture(
                &name,
                format!(
                    "the lake's change table has rows but no change-stream position (it was made by snapshot_diff capture); {}",
                    reset_advice(&name)
                ),
            ));
        }
        self.lake
            .remove_orphans(self.name(), Some(&manifest))
            .await?;
        let schema = document_schema(self.table, self.lake, &self.collection).await?;
        let source_schema = schema.arrow_schema();
        let data = data_columns(&source_schema);
        let change_schema = with_columns(
            &source_schema,
            &data,
            &[
                Field::new(OP, DataType::Utf8, false),
                Field::new(CHANGE_DATE, DataType::Date32, false),
                Field::new(VERSION, DataType::UInt64, false),
                Field::new(IS_DELETED, DataType::UInt8, false),
            ],
        );
        let columns = ChangeColumns {
            schema: Arc::clone(&change_schema),
            data,
        };
        let mut manifest = manifest;
        if manifest.change_stream.is_none() {
            self.snapshot(&mut manifest, &schema, &columns).await?;
            fault::point("change_stream.after_snapshot_commit");
        }
        self.follow(&mut manifest, &schema, &columns).await?;
        self.load(&mut manifest, &change_schema).await?;
        self.report.lake_rows = manifest.rows();
        Ok(())
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
    /// cluster time read before it, committed with the position "start after T0".
    async fn snapshot(
        &mut self,
        manifest: &mut Manifest,
        schema: &DocumentSchema,
        columns: &ChangeColumns,
    ) -> Result<()> {
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
        self.report.rows_read += rows;
        self.report.rows_changed += rows;
        let mut next = manifest.clone();
        next.record_schema(&columns.schema);
        self.add_files(&mut next, day, files);
        next.change_stream = Some(StreamPosition {
            resume_token: None,
            snapshot_time: t0,
            covered_until: t0,
            events: 0,
        });
        // After a reset the ClickHouse tables may hold keys deleted since: rebuild.
        next.warehouse_rebuild = self.warehouse.is_some();
        self.commit(&mut next).await?;
        *manifest = next;
        info!(rows, "Initial snapshot committed.");
        Ok(())
    }

    /// Reads the change stream from the stored position until caught up, and
    /// commits the change rows with the new position.
    async fn follow(
        &mut self,
        manifest: &mut Manifest,
        schema: &DocumentSchema,
        columns: &ChangeColumns,
    ) -> Result<()> {
        let name = self.name().to_string();
        let position = manifest.change_stream.clone().expect("set by the snapshot");
        let token = position.token(&name)?;
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
        self.report.rows_read += events;
        self.report.rows_changed += rows;
        self.report.rows_skipped += skipped;
        info!(events, rows, skipped, caught_up, "Change stream read.");

        let new_token = match &new_token {
            Some(t) => Some(token_json(t)?),
            None => position.resume_token.clone(),
        };
        let next_position = StreamPosition {
            resume_token: new_token,
            snapshot_time: position.snapshot_time,
            covered_until: covered,
            events: position.events + events,
        };
        self.report.watermark_before = Some(position.covered_until.to_string());
        self.report.watermark_after = Some(next_position.covered_until.to_string());
        if rows == 0 && next_position == position {
            info!("Nothing changed.");
            return Ok(());
        }
        let mut next = manifest.clone();
        for (day, day_files) in files {
            self.add_files(&mut next, day, day_files);
        }
        next.change_stream = Some(next_position);
        fault::point("change_stream.before_commit");
        self.commit(&mut next).await?;
        fault::point("change_stream.after_commit");
        *manifest = next;
        info!(version = manifest.version, "Lake committed.");
        Ok(())
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
        let rel = format!("{CHANGE_DATE}={}", day_string(day));
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

    /// Appends files to a day's partition (change rows are only ever added).
    fn add_files(&mut self, next: &mut Manifest, day: i32, files: Vec<FileEntry>) {
        if files.is_empty() {
            return;
        }
        let day_name = day_string(day);
        self.report.files_written += files.len();
        self.report.bytes_written += files.iter().map(|f| f.bytes).sum::<u64>();
        let partition = next.partitions.entry(day_name.clone()).or_default();
        partition.rows += files.iter().map(|f| f.rows).sum::<u64>();
        partition.files.extend(files);
        if self.warehouse.is_some() {
            next.pending_warehouse.insert(day_name.clone());
        }
        if !self.report.partitions_written.contains(&day_name) {
            self.report.partitions_written.push(day_name);
        }
    }

    /// Loads the pending days into `<table>` and `<table>_current`, then clears
    /// them from the manifest.
    async fn load(&mut self, manifest: &mut Manifest, schema: &SchemaRef) -> Result<()> {
        let Some(warehouse) = self.warehouse else {
            return Ok(());
        };
        if manifest.pending_warehouse.is_empty() && !manifest.warehouse_rebuild {
            return Ok(());
        }
        let name = self.name().to_string();
        let current = format!("{name}{CURRENT_SUFFIX}");
        let mut log = self.table.clone();
        log.partition_by = CHANGE_DATE.to_string();
        log.key = vec!["_id".to_string()];
        let mut next = manifest.clone();
        if next.warehouse_rebuild {
            warehouse.drop_table(&name).await?;
            warehouse.drop_table(&current).await?;
            next.pending_warehouse = next.partitions.keys().cloned().collect();
        }
        warehouse.ensure_table(&log, schema).await?;
        // No TTL: a key unchanged for longer than the retention is still current.
        warehouse
            .ensure_table_with_engine(
                &current,
                schema,
                CHANGE_DATE,
                &log.key,
                &format!("ReplacingMergeTree({VERSION}, {IS_DELETED})"),
            )
            .await?;
        let names = column_names(schema);
        for day in next.pending_warehouse.clone() {
            let partition = next.partitions.get(&day).cloned().unwrap_or_default();
            let rows = warehouse
                .load_partition(&log, &names, &day, &partition)
                .await?;
            warehouse
                .copy_partition(&current, &name, &day, rows)
                .await?;
            info!(partition = %day, rows, "Partition loaded.");
            self.report.rows_loaded += rows;
            self.report.partitions_loaded.push(day);
        }
        fault::point("change_stream.before_load_commit");
        next.pending_warehouse.clear();
        next.warehouse_rebuild = false;
        self.commit(&mut next).await?;
        *manifest = next;
        Ok(())
    }

    async fn commit(&self, next: &mut Manifest) -> Result<()> {
        next.version += 1;
        next.run_id = self.run_id.to_string();
        next.committed_at = chrono::Utc::now().to_rfc3339();
        self.lake.write_manifest(next).await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resume_token(data: &str) -> ResumeToken {
        mongodb::bson::from_bson(Bson::Document(doc! { "_data": data })).unwrap()
    }

    #[test]
    fn token_time_reads_mongodb_keystrings_only() {
        // MongoDB's shape: 0x82, Timestamp(0x6B1E6C10, 2), then the rest of the key.
        let mongo = resume_token("826B1E6C10000000022B042C0100296E5A1004");
        assert_eq!(
            token_time(&mongo),
            Some(ClusterTime {
                t: 0x6B1E6C10,
                i: 2
            })
        );
        // SecantusDB's hex BSON (starts with the document length), too short,
        // not hex, not ASCII: no time, so the caller goes by token changes.
        for data in [
            "3d000000127300",
            "82",
            "82ZZZZZZZZ00000002",
            "82é000000000000000000",
        ] {
            assert_eq!(token_time(&resume_token(data)), None, "{data}");
        }
    }

    #[test]
    fn versions_grow_with_cluster_time() {
        let a = ClusterTime {
            t: 1_795_618_452,
            i: 9,
        };
        let b = ClusterTime {
            t: 1_795_618_452,
            i: 10,
        };
        let c = ClusterTime {
            t: 1_795_618_453,
            i: 1,
        };
        assert!(a.version(0) < a.version(1) && a.version(255) < b.version(0));
        assert!(b.version(0) < c.version(0));
        assert_eq!(a.version(300), a.version(255), "the ordinal saturates");
        assert_eq!(day_string(a.day()), "2026-11-25");
        assert_eq!(
            a.to_string(),
            "Timestamp(1795618452, 9) = 2026-11-25T14:54:12Z"
        );
    }

    #[test]
    fn positions_round_trip_through_json() {
        let p = StreamPosition {
            resume_token: Some(serde_json::json!({ "_data": "826500" })),
            snapshot_time: ClusterTime { t: 5, i: 1 },
            covered_until: ClusterTime { t: 6, i: 2 },
            events: 3,
        };
        let text = serde_json::to_string(&p).unwrap();
        let back: StreamPosition = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        let token = back.token("t").unwrap().unwrap();
        assert_eq!(
            token_json(&token).unwrap(),
            serde_json::json!({ "_data": "826500" })
        );
    }
}
