//! The change-row format shared by snapshot-diff and change-stream capture: the
//! document's columns plus `_op` (insert / update / delete), `_change_date` (the
//! partition), `_version` (ReplacingMergeTree keeps the highest) and
//! `_is_deleted` (1 for a delete: `FINAL` hides the key).

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::source::mongo::{HASH_COLUMN, KEY_COLUMN};

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

/// The change table's schema: the document columns `data` of `source`, then the
/// change columns.
pub fn change_schema(source: &Schema, data: &[usize]) -> SchemaRef {
    with_columns(
        source,
        data,
        &[
            Field::new(OP, DataType::Utf8, false),
            Field::new(CHANGE_DATE, DataType::Date32, false),
            Field::new(VERSION, DataType::UInt64, false),
            Field::new(IS_DELETED, DataType::UInt8, false),
        ],
    )
}

/// Indices of the document columns of a source schema (all but `_key`, `_hash`).
pub fn data_columns(schema: &Schema) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() != KEY_COLUMN && f.name() != HASH_COLUMN)
        .map(|(i, _)| i)
        .collect()
}

/// The schema of `columns` of `schema` followed by `extra`.
pub fn with_columns(schema: &Schema, columns: &[usize], extra: &[Field]) -> SchemaRef {
    let mut fields: Vec<Field> = columns.iter().map(|i| schema.field(*i).clone()).collect();
    fields.extend(extra.iter().cloned());
    Arc::new(Schema::new(fields))
}

pub fn append_columns(
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
