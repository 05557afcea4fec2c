//! Writing a model's rows to the lake: validate before write (rows without a
//! match in a `drop_unmatched` key set left out and counted, row checks counted
//! on the way), Parquet files per partition day, and the manifest commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::Column;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::{RecordBatchReceiverStream, RecordBatchStreamAdapter};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use tokio::task::JoinSet;

use super::checks::RowChecks;
use super::keys::KeySet;
use crate::error::{Error, Result};
use crate::lake::manifest::{FileEntry, Manifest, PartitionEntry};
use crate::lake::writer::{day_string, split_by_day, FileRoller};
use crate::lake::Lake;

/// The partition name of an unpartitioned model (its folder, and the ClickHouse
/// partition ID of a table without `PARTITION BY`).
pub use crate::lake::delta::WHOLE_TABLE;

/// The driver's commit, by the run that `next` names.
pub(super) async fn commit(lake: &Lake, next: &mut Manifest) -> Result<()> {
    let run_id = next.run_id.clone();
    crate::pipeline::table::commit(lake, &run_id, next).await
}

/// What [`write_files`] wrote.
pub(super) struct Written {
    pub(super) schema: SchemaRef,
    pub(super) partitions: BTreeMap<String, PartitionEntry>,
}

pub(super) enum WriteError {
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
pub(super) fn validate(
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
pub(super) fn on_own_task(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
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
pub(super) const FILES_CLOSING: usize = 4;

/// The result of a finished file's task (`Some`: the set was not empty).
pub(super) fn joined<T>(
    done: Option<std::result::Result<Result<T>, tokio::task::JoinError>>,
) -> Result<T> {
    match done.expect("a task was waiting") {
        Ok(result) => result,
        Err(e) => Err(Error::lake(format!("writing a model file: {e}"))),
    }
}

/// Writes a stream as the files of table `name`: one folder per day of
/// `partition_by` (rows must arrive ordered by it), or the single folder `all`.
pub(super) async fn write_files(
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
            Some(c) => crate::lake::delta::partition_folder(c, folder),
            None => folder.to_string(),
        };
        let dir = crate::lake::join(&lake.table_path(name), &rel);
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
    lake.vacuum(name).await?;
    Ok(next)
}
