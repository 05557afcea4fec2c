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

use arrow::array::{Array, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::common::HashSet;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::checks::quote;
use super::config::Relationship;

/// The distinct non-NULL values of `to.field` of one relationship, as
/// [`RowConverter`] rows of the model column's type: equal exactly when the
/// values are equal once cast to that type.
pub struct KeySet {
    /// Index of the model's column.
    column: usize,
    converter: RowConverter,
    /// With DataFusion's hasher (foldhash): probing 3M rows with the standard
    /// library's SipHash took a fifth of a fact model's CPU.
    keys: HashSet<Box<[u8]>>,
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
        let converter = RowConverter::new(vec![SortField::new(data_type.clone())])?;
        let mut keys = HashSet::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let values = arrow::compute::cast(batch.column(0), data_type)?;
            let rows = converter.convert_columns(std::slice::from_ref(&values))?;
            for i in (0..values.len()).filter(|&i| values.is_valid(i)) {
                keys.insert(Box::<[u8]>::from(rows.row(i).as_ref()));
            }
        }
        Ok(Self {
            column,
            converter,
            keys,
        })
    }

    /// True for the rows of `batch` whose column has a match (never for NULL).
    pub fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let values = batch.column(self.column);
        let rows = self
            .converter
            .convert_columns(std::slice::from_ref(values))?;
        let matched = BooleanBuffer::collect_bool(values.len(), |i| {
            values.is_valid(i) && self.keys.contains(rows.row(i).as_ref())
        });
        Ok(BooleanArray::new(matched, None))
    }

    /// The rows of `batch` whose column is not NULL and has no match.
    pub fn orphans(&self, batch: &RecordBatch) -> Result<u64, ArrowError> {
        let values = batch.column(self.column);
        let matched = self.matches(batch)?;
        Ok((values.len() - values.null_count() - matched.true_count()) as u64)
    }
}
