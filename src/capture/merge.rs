//! Copy-on-write merge of changed rows into a committed partition.
//!
//! The new files of a partition are its old rows whose key was not changed, followed
//! by the changed rows. They are written beside the old files under new names; the
//! manifest switch makes them live, and only then are the old files deleted.

use std::collections::HashSet;

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
}

/// Merges `changed` (object paths and sizes of staged files) into the partition
/// made of `old` (its live files), writing through `out`.
pub async fn merge_partition(
    table: &str,
    lake: &Lake,
    schema: &SchemaRef,
    key_columns: &[usize],
    old: &[(Path, u64)],
    changed: &[(Path, u64)],
    mut out: FileRoller,
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
    let mut changed_keys: HashSet<Box<[u8]>> = HashSet::new();
    for (path, size) in changed {
        let mut batches = lake
            .read_parquet(path.clone(), *size, READ_BATCH_ROWS)
            .await?;
        while let Some(batch) = batches.try_next().await? {
            let batch = conform(table, schema, batch)?;
            changed_keys.extend(keys_of(&batch)?.iter().map(|row| Box::from(row.as_ref())));
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
                .map(|row| Some(!changed_keys.contains(row.as_ref())))
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
