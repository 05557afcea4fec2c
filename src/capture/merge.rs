//! Copy-on-write merge of changed rows into a committed partition.
//!
//! The new files of a partition are its old rows whose key was not changed, followed
//! by the changed rows. They are written beside the old files under new names; the
//! manifest switch makes them live, and only then are the old files deleted.
//!
//! A backfill reads rows that are mostly in the lake already: with `skip_identical`
//! the merge first compares each changed row with the old row of its key (a hash
//! of the whole row) and writes nothing when every changed row is already there
//! as it is, so a backfill run twice rewrites nothing the second time.

use std::collections::HashMap;

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use futures::TryStreamExt;
use object_store::path::Path;

use crate::error::{Error, Result};
use crate::lake::manifest::FileEntry;
use crate::lake::writer::FileRoller;
use crate::lake::Lake;

/// Rows per batch when re-reading lake files.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// What a merge wrote.
pub struct Merged {
    pub files: Vec<FileEntry>,
    /// Old rows dropped because a changed row with the same key replaced them.
    pub replaced_rows: u64,
    /// Changed rows equal, in every column, to the old row they replace (counted
    /// only with `skip_identical`).
    pub identical_rows: u64,
    /// Every changed row was identical: nothing was written, the old files stay.
    pub unchanged: bool,
}

/// Merges `changed` (object paths and sizes of staged files) into the partition
/// made of `old` (its live files), writing through `out`. With `skip_identical`,
/// nothing is written when every changed row equals the old row of its key.
#[allow(clippy::too_many_arguments)]
pub async fn merge_partition(
    table: &str,
    lake: &Lake,
    schema: &SchemaRef,
    key_columns: &[usize],
    old: &[(Path, u64)],
    changed: &[(Path, u64)],
    mut out: FileRoller,
    skip_identical: bool,
) -> Result<Merged> {
    // Keys in Arrow's row format: compact bytes, equal exactly when the values are.
    let converter = RowConverter::new(
        key_columns
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )
    .map_err(|e| Error::capture(table, e))?;
    let keys_of = |batch: &RecordBatch| {
        let columns: Vec<_> = key_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        converter
            .convert_columns(&columns)
            .map_err(|e| Error::capture(table, e))
    };
    // Whole rows, hashed, to tell a changed row from the same row read again.
    let whole = if skip_identical {
        Some(
            RowConverter::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )
            .map_err(|e| Error::capture(table, e))?,
        )
    } else {
        None
    };
    let hashes_of = |batch: &RecordBatch| -> Result<Vec<u64>> {
        let Some(whole) = &whole else {
            return Ok(vec![0; batch.num_rows()]);
        };
        let rows = whole
            .convert_columns(batch.columns())
            .map_err(|e| Error::capture(table, e))?;
        Ok(rows
            .iter()
            .map(|row| twox_hash::XxHash3_64::oneshot(row.as_ref()))
            .collect())
    };
    // Key of each changed row → the hash of the whole row (0 without skip_identical).
    let mut changed_keys: HashMap<Box<[u8]>, u64> = HashMap::new();
    let mut changed_rows = 0u64;
    for (path, size) in changed {
        let mut batches = lake
            .read_parquet(path.clone(), *size, READ_BATCH_ROWS)
            .await?;
        while let Some(batch) = batches.try_next().await? {
            let batch = conform(table, schema, batch)?;
            changed_rows += batch.num_rows() as u64;
            let hashes = hashes_of(&batch)?;
            changed_keys.extend(
                keys_of(&batch)?
                    .iter()
                    .zip(hashes)
                    .map(|(row, hash)| (Box::from(row.as_ref()), hash)),
            );
        }
    }
    let mut identical_rows = 0u64;
    if skip_identical {
        for (path, size) in old {
            let mut batches = lake
                .read_parquet(path.clone(), *size, READ_BATCH_ROWS)
                .await?;
            while let Some(batch) = batches.try_next().await? {
                let batch = conform(table, schema, batch)?;
                let hashes = hashes_of(&batch)?;
                identical_rows += keys_of(&batch)?
                    .iter()
                    .zip(hashes)
                    .filter(|(key, hash)| changed_keys.get(key.as_ref()) == Some(hash))
                    .count() as u64;
            }
        }
        if identical_rows == changed_rows {
            return Ok(Merged {
                files: Vec::new(),
                replaced_rows: 0,
                identical_rows,
                unchanged: true,
            });
        }
    }
    let mut replaced_rows = 0u64;
    for (path, size) in old {
        let mut batches = lake
            .read_parquet(path.clone(), *size, READ_BATCH_ROWS)
            .await?;
        while let Some(batch) = batches.try_next().await? {
            let batch = conform(table, schema, batch)?;
            let keys = keys_of(&batch)?;
            let keep: BooleanArray = keys
                .iter()
                .map(|row| Some(!changed_keys.contains_key(row.as_ref())))
                .collect();
            let kept = filter_record_batch(&batch, &keep).map_err(|e| Error::capture(table, e))?;
            replaced_rows += (batch.num_rows() - kept.num_rows()) as u64;
            out.write(&kept).await?;
            crate::fault::point("merge.batch");
        }
    }
    for (path, size) in changed {
        let mut batches = lake
            .read_parquet(path.clone(), *size, READ_BATCH_ROWS)
            .await?;
        while let Some(batch) = batches.try_next().await? {
            out.write(&conform(table, schema, batch)?).await?;
        }
    }
    Ok(Merged {
        files: out.finish().await?,
        replaced_rows,
        identical_rows,
        unchanged: false,
    })
}

/// Gives a batch (from the source, or read back from an older lake file) the
/// table's current schema: columns by name, added ones NULL, narrower ones cast up.
pub fn conform(table: &str, schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.schema().as_ref() == schema.as_ref() {
        return Ok(batch);
    }
    crate::lake::schema::adapt(&batch, schema).map_err(|e| Error::capture(table, e))
}
