//! Key values held in memory while a model is written, for what is decided in
//! the pass that writes it:
//!
//! - [`KeySet`]: the keys of a referenced table. `drop_unmatched` drops the
//!   model's rows without a match, the `relationships` check counts them. The
//!   referenced side is read first (`SELECT DISTINCT field FROM to`) and kept as
//!   a hash set outside DataFusion, rather than joined in SQL: the planner may put
//!   either side of a join on its (unspillable) build side, and with the model's
//!   rows there a 3M-row staging model ran out of its memory pool. The referenced
//!   side is the small one in the models this is for (dimensions, lookups).
//! - [`KeyValues`] itself, which the `unique` check fills with the model's own
//!   keys while they fit its memory budget.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Int64Type};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::HashSet;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::quote;
use crate::config::models::Relationship;

/// The distinct non-NULL values of `to.field` of one relationship, cast to the
/// type of the model's column: a row matches when its value equals one of them.
pub struct KeySet {
    /// Index of the model's column.
    column: usize,
    keys: KeyValues,
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
        let mut keys = KeyValues::new(std::slice::from_ref(data_type))?;
        while let Some(batch) = stream.next().await {
            let values = arrow::compute::cast(batch?.column(0), data_type)?;
            keys.insert(&[values], |_| {})?;
        }
        Ok(Self { column, keys })
    }

    /// True for the rows of `batch` whose column has a match (never for NULL).
    pub fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let values = batch.column(self.column);
        let found = self.keys.contains_each(std::slice::from_ref(values))?;
        Ok(BooleanArray::new(found, None))
    }

    /// The rows of `batch` whose column is not NULL and has no match.
    pub fn orphans(&self, batch: &RecordBatch) -> Result<u64, ArrowError> {
        let values = batch.column(self.column);
        let matched = self.matches(batch)?;
        Ok((values.len() - values.null_count() - matched.true_count()) as u64)
    }
}

/// A set of the values of one or more key columns, held as what compares
/// fastest for their type. With DataFusion's hasher (foldhash): probing 3M rows
/// with the standard library's SipHash took a fifth of a fact model's CPU, and
/// the row format's conversion of every probed value most of the rest.
///
/// A single integer or text column skips its NULLs (the caller counts them);
/// other keys keep them, as SQL's `GROUP BY` does.
pub enum KeyValues {
    /// One integer column whose values fit an `i64`.
    Integer(HashSet<i64>),
    /// One text column (`Utf8`, `LargeUtf8`, `Utf8View`), and the bytes of text
    /// held.
    Text(HashSet<Box<str>>, usize),
    /// Anything else, as [`RowConverter`] rows (equal exactly when the values
    /// are), and the bytes of rows held.
    Rows(RowConverter, HashSet<Box<[u8]>>, usize),
}

impl KeyValues {
    /// An empty set for keys of these column types.
    pub fn new(types: &[DataType]) -> Result<Self, ArrowError> {
        Ok(match types {
            [t] if crate::lake::schema::fits_i64(t) => Self::Integer(HashSet::new()),
            [t] if is_text(t) => Self::Text(HashSet::new(), 0),
            _ => {
                let fields = types.iter().map(|t| SortField::new(t.clone())).collect();
                Self::Rows(RowConverter::new(fields)?, HashSet::new(), 0)
            }
        })
    }

    /// Whether NULLs are left out ([`KeyValues::Integer`] and
    /// [`KeyValues::Text`]).
    pub fn skips_nulls(&self) -> bool {
        !matches!(self, Self::Rows(..))
    }

    /// Adds the keys of `columns` (one array per key column, as typed in
    /// [`KeyValues::new`]), calling `repeated` with each row whose key was in the
    /// set already.
    pub fn insert(
        &mut self,
        columns: &[ArrayRef],
        mut repeated: impl FnMut(usize),
    ) -> Result<(), ArrowError> {
        match self {
            Self::Integer(set) => {
                let values = arrow::compute::cast(&columns[0], &DataType::Int64)?;
                for (row, value) in values.as_primitive::<Int64Type>().iter().enumerate() {
                    if value.is_some_and(|v| !set.insert(v)) {
                        repeated(row);
                    }
                }
            }
            Self::Text(set, bytes) => {
                let values = arrow::compute::cast(&columns[0], &DataType::Utf8)?;
                for (row, value) in values.as_string::<i32>().iter().enumerate() {
                    let Some(value) = value else { continue };
                    if set.contains(value) {
                        repeated(row);
                    } else {
                        *bytes += value.len();
                        set.insert(value.into());
                    }
                }
            }
            Self::Rows(converter, set, bytes) => {
                let rows = converter.convert_columns(columns)?;
                for (row, key) in rows.iter().enumerate() {
                    if set.contains(key.as_ref()) {
                        repeated(row);
                    } else {
                        *bytes += key.as_ref().len();
                        set.insert(key.as_ref().into());
                    }
                }
            }
        }
        Ok(())
    }

    /// For each row of `columns`, whether its key is in the set (never for a
    /// NULL of a single key column).
    pub fn contains_each(&self, columns: &[ArrayRef]) -> Result<BooleanBuffer, ArrowError> {
        let len = columns[0].len();
        let valid = |i: usize| columns[0].is_valid(i);
        Ok(match self {
            Self::Integer(set) => {
                let values = arrow::compute::cast(&columns[0], &DataType::Int64)?;
                let values = values.as_primitive::<Int64Type>().values();
                BooleanBuffer::collect_bool(len, |i| valid(i) && set.contains(&values[i]))
            }
            Self::Text(set, _) => {
                let values = &columns[0];
                match values.data_type() {
                    DataType::Utf8View => {
                        let values = values.as_string_view();
                        BooleanBuffer::collect_bool(len, |i| {
                            valid(i) && set.contains(values.value(i))
                        })
                    }
                    DataType::LargeUtf8 => {
                        let values = values.as_string::<i64>();
                        BooleanBuffer::collect_bool(len, |i| {
                            valid(i) && set.contains(values.value(i))
                        })
                    }
                    _ => {
                        let values = arrow::compute::cast(values, &DataType::Utf8)?;
                        let values = values.as_string::<i32>();
                        BooleanBuffer::collect_bool(len, |i| {
                            valid(i) && set.contains(values.value(i))
                        })
                    }
                }
            }
            Self::Rows(converter, set, _) => {
                let rows: Rows = converter.convert_columns(columns)?;
                // One column: a NULL matches nothing, as in SQL's `=`.
                let one = columns.len() == 1;
                BooleanBuffer::collect_bool(len, |i| {
                    (!one || valid(i)) && set.contains(rows.row(i).as_ref())
                })
            }
        })
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        match self {
            Self::Integer(set) => set.len(),
            Self::Text(set, _) => set.len(),
            Self::Rows(_, set, _) => set.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// About how many bytes the set holds: its table and the keys' own bytes.
    pub fn memory_bytes(&self) -> usize {
        // A hashbrown slot is the value plus one control byte.
        fn table<T>(set: &HashSet<T>) -> usize {
            set.capacity() * (std::mem::size_of::<T>() + 1)
        }
        match self {
            Self::Integer(set) => table(set),
            Self::Text(set, bytes) => table(set) + bytes,
            Self::Rows(_, set, bytes) => table(set) + bytes,
        }
    }
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

    use arrow::array::{Date32Array, Int32Array, Int64Array, StringArray, StringViewArray};
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
            Arc::new(Date32Array::from(vec![Some(10), Some(12), None])),
            Arc::new(Date32Array::from(vec![Some(12), None, Some(11)])),
        )
        .await;
        assert_eq!(dates, [true, false, false]);
    }

    #[test]
    fn repeated_keys_are_reported_by_row_across_batches() {
        let repeats = |types: &[DataType], batches: Vec<Vec<ArrayRef>>| {
            let mut keys = KeyValues::new(types).unwrap();
            let mut seen = Vec::new();
            for (b, columns) in batches.iter().enumerate() {
                keys.insert(columns, |row| seen.push((b, row))).unwrap();
            }
            assert!(keys.memory_bytes() > 0);
            seen
        };
        let ints: Vec<Vec<ArrayRef>> = vec![
            vec![Arc::new(Int64Array::from(vec![Some(1), Some(2), None]))],
            vec![Arc::new(Int64Array::from(vec![
                Some(2),
                None,
                Some(1),
                Some(3),
            ]))],
        ];
        assert_eq!(repeats(&[DataType::Int64], ints), [(1, 0), (1, 2)]);
        let text: Vec<Vec<ArrayRef>> =
            vec![vec![Arc::new(StringViewArray::from(vec!["a", "b", "a"]))]];
        assert_eq!(repeats(&[DataType::Utf8View], text), [(0, 2)]);
        // Two columns: the pair is the key, NULL equal to NULL as in GROUP BY.
        let pairs: Vec<Vec<ArrayRef>> = vec![vec![
            Arc::new(Int64Array::from(vec![Some(1), Some(1), None, None])),
            Arc::new(StringArray::from(vec!["x", "y", "x", "x"])),
        ]];
        assert_eq!(repeats(&[DataType::Int64, DataType::Utf8], pairs), [(0, 3)]);
    }
}
