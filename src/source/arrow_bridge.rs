//! Hands record batches from connectorx (built on arrow 56) to the rest of sluice
//! (arrow 59) through the Arrow C Data Interface: the buffers move, nothing is copied.

use arrow::array::StructArray;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// Moves an arrow 56 batch into arrow 59 without copying its buffers.
pub fn into_arrow(batch: arrow56::record_batch::RecordBatch) -> Result<RecordBatch, ArrowError> {
    let rows = batch.num_rows();
    let schema_metadata = batch.schema().metadata().clone();
    let data = arrow56::array::Array::into_data(arrow56::array::StructArray::from(batch));
    let (mut array56, mut schema56) =
        arrow56::ffi::to_ffi(&data).map_err(|e| ArrowError::CDataInterface(e.to_string()))?;
    // SAFETY: both crates implement the same C ABI structs (`#[repr(C)]`, identical
    // layout per the Arrow C Data Interface spec). `from_raw` takes ownership of the
    // release callbacks and leaves empty (release = NULL) structs behind, so the
    // arrow 56 values dropped at the end of this scope release nothing.
    let (array, schema) = unsafe {
        (
            arrow::ffi::FFI_ArrowArray::from_raw(
                (&mut array56 as *mut arrow56::ffi::FFI_ArrowArray).cast(),
            ),
            arrow::ffi::FFI_ArrowSchema::from_raw(
                (&mut schema56 as *mut arrow56::ffi::FFI_ArrowSchema).cast(),
            ),
        )
    };
    // SAFETY: `array` and `schema` were produced together by `to_ffi` above.
    let data = unsafe { arrow::ffi::from_ffi(array, &schema)? };
    let struct_array = StructArray::from(data);
    if struct_array.num_columns() == 0 {
        let schema = arrow::datatypes::Schema::new_with_metadata(
            Vec::<arrow::datatypes::Field>::new(),
            schema_metadata,
        );
        return RecordBatch::try_new_with_options(
            std::sync::Arc::new(schema),
            vec![],
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows)),
        );
    }
    let batch = RecordBatch::from(struct_array);
    let schema = batch
        .schema()
        .as_ref()
        .clone()
        .with_metadata(schema_metadata);
    batch.with_schema(std::sync::Arc::new(schema))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn moves_values_and_types_unchanged() {
        use arrow56::array as a56;
        use arrow56::datatypes as d56;
        let schema = Arc::new(d56::Schema::new(vec![
            d56::Field::new("id", d56::DataType::Int64, false),
            d56::Field::new("name", d56::DataType::LargeUtf8, true),
            d56::Field::new(
                "ts",
                d56::DataType::Timestamp(d56::TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ]));
        let ids = a56::Int64Array::from(vec![1, 2, 3]);
        let id_ptr = ids.values().as_ptr();
        let batch = arrow56::record_batch::RecordBatch::try_new(
            schema,
            vec![
                Arc::new(ids),
                Arc::new(a56::LargeStringArray::from(vec![
                    Some("a"),
                    None,
                    Some("é"),
                ])),
                Arc::new(
                    a56::TimestampMicrosecondArray::from(vec![Some(0), Some(1), None])
                        .with_timezone("+00:00"),
                ),
            ],
        )
        .unwrap();
        let out = into_arrow(batch).unwrap();
        assert_eq!(out.num_rows(), 3);
        assert_eq!(
            out.schema().field(2).data_type(),
            &arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some("+00:00".into())
            )
        );
        let ids = out
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(ids.values().as_ptr(), id_ptr, "buffers must move, not copy");
        let text = arrow::util::pretty::pretty_format_batches(&[out])
            .unwrap()
            .to_string();
        assert!(
            text.contains("| 2  |      | 1970-01-01T00:00:00.000001Z |"),
            "{text}"
        );
    }
}
