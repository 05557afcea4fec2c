//! The keys of a referenced table, held in memory while a model is written:
//! `drop_unmatched` drops the model's rows without a match, the `relationships`
//! check counts them, both in the pass that writes the model.
//!
//! The referenced side is read first (`SELECT DISTINCT field FROM to`) and kept
//! as a hash set outside DataFusion, rather than joined in SQL: the planner may
//! put either side of a join on its (unspillable) build side, and with the
//! model's rows there a 3M-row staging model ran out of its memory pool. The
//! referenced side is the small one in the models this is for (dimensions,
//! lookups); its distinct keys are what is held.

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Int64Type};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::common::HashSet;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::checks::quote;
use super::config::Relationship;

/// The distinct non-NULL values of `to.field` of one relationship, cast to the
/// type of the model's column: a row matches when its value equals one of them.
pub struct KeySet {
    /// Index of the model's column.
    column: usize,
    keys: Keys,
}

/// The keys, held as what compares fastest for their type. With DataFusion's
/// hasher (foldhash): probing 3M rows with the standard library's SipHash took a
/// fifth of a fact model's CPU, and the row format's conversion of every probed
/// value most of the rest.
enum Keys {
    /// Integers that fit an `i64`, as `i64`.
    Integer(HashSet<i64>),
    /// Text (`Utf8`, `LargeUtf8`, `Utf8View`).
    Text(HashSet<Box<str>>),
    /// Any other type, as [`RowConverter`] rows: equal exactly when the values are.
    Rows(RowConverter, HashSet<Box<[u8]>>),
}

impl KeySet {
    /// Reads the keys `relationship` refers to, cast to `data_type`, the type of
    /// the model's column number `column`.
    pub async fn read(
        ctx: &SessionContext,
        relationship: &Relationship,
        column: usize,
        data_type: &DataType,
    ) -> Result<Self, DataFusionError> {
        let sql = format!(
            "SELECT DISTINCT {} FROM {}",
            quote(relationship.field()),
            quote(&relationship.to)
        );
        let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
        let mut keys = if is_integer(data_type) {
            Keys::Integer(HashSet::new())
        } else if is_text(data_type) {
            Keys::Text(HashSet::new())
        } else {
            let converter = RowConverter::new(vec![SortField::new(data_type.clone())])?;
            Keys::Rows(converter, HashSet::new())
        };
        while let Some(batch) = stream.next().await {
            let values = arrow::compute::cast(batch?.column(0), data_type)?;
            match &mut keys {
                Keys::Integer(set) => {
                    let values = arrow::compute::cast(&values, &DataType::Int64)?;
                    set.extend(values.as_primitive::<Int64Type>().iter().flatten());
                }
                Keys::Text(set) => {
                    let values = arrow::compute::cast(&values, &DataType::Utf8)?;
                    set.extend(values.as_string::<i32>().iter().flatten().map(Box::from));
                }
                Keys::Rows(converter, set) => {
                    let rows = converter.convert_columns(std::slice::from_ref(&values))?;
                    for i in (0..values.len()).filter(|&i| values.is_valid(i)) {
                        set.insert(Box::<[u8]>::from(rows.row(i).as_ref()));
                    }
                }
            }
        }
        Ok(Self { column, keys })
    }

    /// True for the rows of `batch` whose column has a match (never for NULL).
    pub fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let values = batch.column(self.column);
        let len = values.len();
        let valid = |i: usize| values.is_valid(i);
        let matched = match &self.keys {
            Keys::Integer(set) => {
                let values = arrow::compute::cast(values, &DataType::Int64)?;
                let values = values.as_primitive::<Int64Type>().values();
                BooleanBuffer::collect_bool(len, |i| valid(i) && set.contains(&values[i]))
            }
            Keys::Text(set) => match values.data_type() {
                DataType::Utf8View => {
                    let values = values.as_string_view();
                    BooleanBuffer::collect_bool(len, |i| valid(i) && set.contains(values.value(i)))
                }
                DataType::LargeUtf8 => {
                    let values = values.as_string::<i64>();
                    BooleanBuffer::collect_bool(len, |i| valid(i) && set.contains(values.value(i)))
                }
                _ => {
                    let values = arrow::compute::cast(values, &DataType::Utf8)?;
                    let values = values.as_string::<i32>();
                    BooleanBuffer::collect_bool(len, |i| valid(i) && set.contains(values.value(i)))
                }
            },
            Keys::Rows(converter, set) => {
                let rows = converter.convert_columns(std::slice::from_ref(values))?;
                BooleanBuffer::collect_bool(len, |i| valid(i) && set.contains(rows.row(i).as_ref()))
            }
        };
        Ok(BooleanArray::new(matched, None))
    }

    /// The rows of `batch` whose column is not NULL and has no match.
    pub fn orphans(&self, batch: &RecordBatch) -> Result<u64, ArrowError> {
        let values = batch.column(self.column);
        let matched = self.matches(batch)?;
        Ok((values.len() - values.null_count() - matched.true_count()) as u64)
    }
}

/// Integer types whose every value is an `i64`.
fn is_integer(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Date32Array, Int32Array, Int64Array, StringArray, StringViewArray,
    };
    use arrow::datatypes::{Field, Schema};

    use super::*;

    /// A key set over `referred` (column `k` of table `parent`), probed by
    /// `probe`; the rows that match.
    async fn matching(referred: ArrayRef, probe: ArrayRef) -> Vec<bool> {
        let ctx = SessionContext::new();
        let parent = RecordBatch::try_from_iter([("k", referred)]).unwrap();
        ctx.register_batch("parent", parent).unwrap();
        let relationship = Relationship {
            column: "c".into(),
            to: "parent".into(),
            field: Some("k".into()),
        };
        let schema = Schema::new(vec![Field::new("c", probe.data_type().clone(), true)]);
        let keys = KeySet::read(&ctx, &relationship, 0, probe.data_type())
            .await
            .unwrap();
        let batch = RecordBatch::try_new(Arc::new(schema), vec![probe]).unwrap();
        let matched = keys.matches(&batch).unwrap();
        assert_eq!(
            keys.orphans(&batch).unwrap() as usize,
            batch.num_rows() - batch.column(0).null_count() - matched.true_count()
        );
        matched.iter().map(|m| m.unwrap()).collect()
    }

    #[tokio::test]
    async fn each_key_type_matches_equal_values_and_never_null() {
        let ints = matching(
            Arc::new(Int64Array::from(vec![Some(1), Some(3), None])),
            Arc::new(Int32Array::from(vec![Some(1), Some(2), None, Some(3)])),
        )
        .await;
        assert_eq!(ints, [true, false, false, true]);

        let text = matching(
            Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            Arc::new(StringViewArray::from(vec![
                Some("a"),
                Some("b"),
                None,
                Some("c"),
            ])),
        )
        .await;
        assert_eq!(text, [true, false, false, true]);

        let dates = matching(
            Arc::new(Date32Array::from(vec![Some(10), Some(12)])),
            Arc::new(Date32Array::from(vec![Some(12), None, Some(11)])),
        )
        .await;
        assert_eq!(dates, [true, false, false]);
    }
}
