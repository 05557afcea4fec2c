//! Schema evolution: how the source's columns today relate to the lake's.
//!
//! Added columns and widened types evolve the table in place: new files carry the new
//! schema, old files are read as if they had it (missing columns are NULL, narrow
//! values are cast up), and ClickHouse gets `ADD COLUMN` / `MODIFY COLUMN` before the
//! load. Anything else (a dropped column, a narrower or different type) would lose or
//! change data, so it stops the table unless a rebuild is asked for.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};

use super::manifest::ColumnEntry;

/// How the source schema differs from the lake's.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaChange {
    /// Same columns and types.
    Same,
    /// Only additions and widenings; the lake and warehouse can follow.
    Evolve {
        added: Vec<FieldRef>,
        widened: Vec<(FieldRef, DataType)>,
    },
    /// A change that would drop or alter data; the reasons, one per column.
    Incompatible(Vec<String>),
}

/// Compares the lake's recorded columns with the source's schema.
pub fn compare(lake: &[ColumnEntry], source: &Schema) -> SchemaChange {
    if lake.is_empty() {
        return SchemaChange::Same;
    }
    let mut problems = Vec::new();
    let mut widened = Vec::new();
    for column in lake {
        let Ok(old_type) = column.arrow_type.parse::<DataType>() else {
            problems.push(format!(
                "column {:?} has an unreadable type {:?} in the manifest",
                column.name, column.arrow_type
            ));
            continue;
        };
        match source.field_with_name(&column.name) {
            Err(_) => problems.push(format!(
                "column {:?} was dropped at the source",
                column.name
            )),
            Ok(field) if field.data_type() == &old_type => {}
            Ok(field) if is_widening(&old_type, field.data_type()) => {
                widened.push((Arc::new(field.clone()), old_type));
            }
            Ok(field) => problems.push(format!(
                "column {:?} changed type from {old_type} to {}",
                column.name,
                field.data_type()
            )),
        }
    }
    if !problems.is_empty() {
        return SchemaChange::Incompatible(problems);
    }
    let added: Vec<FieldRef> = source
        .fields()
        .iter()
        .filter(|f| !lake.iter().any(|c| &c.name == f.name()))
        .cloned()
        .collect();
    if added.is_empty() && widened.is_empty() {
        SchemaChange::Same
    } else {
        SchemaChange::Evolve { added, widened }
    }
}

/// Whether every `from` value is exactly representable as `to`.
pub fn is_widening(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_rank = |t: &DataType| match t {
        Int8 => Some((true, 8)),
        Int16 => Some((true, 16)),
        Int32 => Some((true, 32)),
        Int64 => Some((true, 64)),
        UInt8 => Some((false, 8)),
        UInt16 => Some((false, 16)),
        UInt32 => Some((false, 32)),
        UInt64 => Some((false, 64)),
        _ => None,
    };
    match (from, to) {
        (a, b) if a == b => true,
        (Utf8, LargeUtf8)
        | (Binary, LargeBinary)
        | (Float16 | Float32, Float64)
        | (Float16, Float32) => true,
        (Date32, Date64) => true,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            s2 >= s1 && (*p2 as i16 - *s2 as i16) >= (*p1 as i16 - *s1 as i16)
        }
        (a, b) => match (int_rank(a), int_rank(b)) {
            (Some((sa, ba)), Some((sb, bb))) => (sa == sb && bb > ba) || (!sa && sb && bb > ba),
            _ => false,
        },
    }
}

/// Gives `batch` (from an older file of the table) the table's current `schema`:
/// columns by name, missing ones NULL, narrower ones cast up.
pub fn adapt(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> Result<ArrayRef, String> {
            match batch.column_by_name(field.name()) {
                None if field.is_nullable() => Ok(new_null_array(field.data_type(), rows)),
                None => Err(format!(
                    "column {:?} is missing from an older file and is NOT NULL",
                    field.name()
                )),
                Some(column) if column.data_type() == field.data_type() => Ok(Arc::clone(column)),
                Some(column) => cast(column, field.data_type())
                    .map_err(|e| format!("column {:?}: {e}", field.name())),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())
}

/// A nullable copy of `field` (an added column is NULL in every older row).
pub fn nullable(field: &Field) -> Field {
    field.clone().with_nullable(true)
}

/// Whether every value of `data_type` is an `i64`: the signed integers and the
/// unsigned ones up to 32 bits.
pub fn fits_i64(data_type: &DataType) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::manifest::columns_of;

    fn schema(fields: Vec<(&str, DataType)>) -> Schema {
        Schema::new(
            fields
                .into_iter()
                .map(|(n, t)| Field::new(n, t, true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn added_and_widened_columns_evolve() {
        let old = columns_of(&schema(vec![
            ("id", DataType::Int32),
            ("amount", DataType::Decimal128(10, 2)),
        ]));
        let new = schema(vec![
            ("id", DataType::Int64),
            ("amount", DataType::Decimal128(12, 2)),
            ("note", DataType::LargeUtf8),
        ]);
        match compare(&old, &new) {
            SchemaChange::Evolve { added, widened } => {
                assert_eq!(added.len(), 1);
                assert_eq!(added[0].name(), "note");
                assert_eq!(widened.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dropped_or_changed_columns_are_incompatible() {
        let old = columns_of(&schema(vec![
            ("id", DataType::Int64),
            ("name", DataType::LargeUtf8),
        ]));
        let new = schema(vec![("id", DataType::Int32), ("name", DataType::Int64)]);
        let SchemaChange::Incompatible(reasons) = compare(&old, &new) else {
            panic!()
        };
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].contains("\"id\" changed type from Int64 to Int32"),
            "{reasons:?}"
        );
        let dropped = compare(&old, &schema(vec![("id", DataType::Int64)]));
        assert_eq!(
            dropped,
            SchemaChange::Incompatible(vec!["column \"name\" was dropped at the source".into()])
        );
    }

    #[test]
    fn adapt_fills_and_casts() {
        let old = Arc::new(schema(vec![("id", DataType::Int32)]));
        let batch = RecordBatch::try_new(
            old,
            vec![Arc::new(arrow::array::Int32Array::from(vec![1, 2]))],
        )
        .unwrap();
        let new = Arc::new(schema(vec![
            ("id", DataType::Int64),
            ("note", DataType::Utf8),
        ]));
        let adapted = adapt(&batch, &new).unwrap();
        assert_eq!(adapted.schema(), new);
        assert_eq!(adapted.column(1).null_count(), 2);
    }
}
