//! The streaming merge join of snapshot-diff capture: today's snapshot (from
//! MongoDB, sorted by `_key`) against the last committed one (from the lake, also
//! sorted by `_key`), comparing each key's content hash (`_hash`). It writes the
//! new state and the change rows (`_op` insert / update / delete) as it goes,
//! holding one batch of each side, never a whole snapshot.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, StringArray, UInt64Array,
    UInt8Array,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{SchemaRef, UInt64Type};
use arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::changes::{append_columns, CURRENT_SUFFIX};
use super::merge::conform;
use crate::error::{Error, Result};
use crate::lake::writer::FileRoller;
use crate::source::mongo::{HASH_COLUMN, KEY_COLUMN};

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    pub(super) read: u64,
    pub(super) inserts: u64,
    pub(super) updates: u64,
    pub(super) deletes: u64,
}

/// One input of the merge join: a stream of batches sorted by `_key`.
pub(super) struct Side {
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
    pub(super) fn new(stream: BoxStream<'static, Result<RecordBatch>>) -> Self {
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

pub(super) struct MergeJoin<'a> {
    pub(super) name: &'a str,
    pub(super) new: Side,
    pub(super) old: Side,
    pub(super) state_roller: FileRoller,
    pub(super) change_roller: FileRoller,
    pub(super) state_schema: SchemaRef,
    pub(super) change_schema: SchemaRef,
    /// The source's schema (MongoDB batches and, re-read, the state's files).
    pub(super) source_schema: SchemaRef,
    /// Indices of the document columns (without `_key`, `_hash`).
    pub(super) data: Vec<usize>,
    pub(super) day: i32,
    pub(super) version: u64,
    pub(super) counts: Counts,
}

impl MergeJoin<'_> {
    /// Runs the join to its end: every row of both sides read once.
    pub(super) async fn run(&mut self) -> Result<()> {
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
