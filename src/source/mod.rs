//! Sources: each yields a schema and a stream of Arrow record batches.

pub mod arrow_bridge;
pub mod horizon;
pub mod mongo;
pub mod sql;
pub mod types;

use std::pin::Pin;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::Stream;

use crate::error::Result;

/// A stream of batches whose schema is known before the first batch arrives.
pub struct BatchStream {
    pub schema: SchemaRef,
    pub batches: Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>,
}
