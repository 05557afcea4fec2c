//! The schema of a collection's documents: inferred from a sample (the type of
//! each value, widened across documents), then overridden by the types declared
//! in the config ([`ColumnType`]).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mongodb::bson::raw::{RawBsonRef, RawDocument};
use serde::{Deserialize, Serialize};

use super::builder::{decimal_parts, digits};
use super::{HASH_COLUMN, KEY_COLUMN, OVERFLOW_COLUMN};
use crate::config::mongo_types::{Column, ColumnType};
use crate::config::{MismatchPolicy, NestedMode};

/// Nesting levels turned into Struct / List columns by inference; deeper values
/// are stored as JSON strings.
const MAX_INFER_DEPTH: usize = 16;

/// Schema inference: the type of sampled values, merged across documents.
impl ColumnType {
    /// The type of one value, for inference.
    fn of_value(value: RawBsonRef<'_>, nested: NestedMode, depth: usize) -> ColumnType {
        match value {
            RawBsonRef::Double(_) => ColumnType::Double,
            RawBsonRef::String(_) => ColumnType::String,
            RawBsonRef::Boolean(_) => ColumnType::Bool,
            RawBsonRef::Null | RawBsonRef::Undefined => ColumnType::Unknown,
            RawBsonRef::Int32(_) => ColumnType::Int32,
            RawBsonRef::Int64(_) => ColumnType::Int64,
            RawBsonRef::ObjectId(_) => ColumnType::ObjectId,
            RawBsonRef::DateTime(_) => ColumnType::Timestamp,
            RawBsonRef::Binary(_) => ColumnType::Binary,
            RawBsonRef::Decimal128(d) => match decimal_parts(d) {
                Some((_, coefficient, exponent)) => {
                    let digits = digits(coefficient) as i32;
                    let scale = (-exponent).max(0);
                    let int_digits = (digits + exponent).max(1);
                    if scale + int_digits > 38 {
                        ColumnType::DecimalText
                    } else {
                        ColumnType::Decimal {
                            precision: (scale + int_digits) as u8,
                            scale: scale as i8,
                        }
                    }
                }
                None => ColumnType::DecimalText,
            },
            RawBsonRef::Document(d) if nested == NestedMode::Struct && depth < MAX_INFER_DEPTH => {
                let mut columns: Vec<Column> = Vec::new();
                for (name, v) in d.iter().flatten() {
                    merge_field(&mut columns, name, Self::of_value(v, nested, depth + 1));
                }
                ColumnType::Struct(columns)
            }
            RawBsonRef::Array(a) if nested == NestedMode::Struct && depth < MAX_INFER_DEPTH => {
                let mut item = ColumnType::Unknown;
                for v in a.into_iter().flatten() {
                    item = item.merge(Self::of_value(v, nested, depth + 1));
                }
                ColumnType::List(Box::new(item))
            }
            _ => ColumnType::Json,
        }
    }

    /// The narrowest type holding values of both types.
    fn merge(self, other: ColumnType) -> ColumnType {
        use ColumnType::*;
        match (self, other) {
            (Unknown, t) | (t, Unknown) => t,
            (a, b) if a == b => a,
            (Int32, Int64) | (Int64, Int32) => Int64,
            (Int32 | Int64, Double) | (Double, Int32 | Int64) => Double,
            (
                Decimal {
                    precision: p1,
                    scale: s1,
                },
                Decimal {
                    precision: p2,
                    scale: s2,
                },
            ) => {
                let scale = s1.max(s2);
                let int_digits = (p1 as i8 - s1).max(p2 as i8 - s2);
                if int_digits as i32 + scale as i32 > 38 {
                    DecimalText
                } else {
                    Decimal {
                        precision: (int_digits + scale) as u8,
                        scale,
                    }
                }
            }
            (Decimal { .. }, DecimalText) | (DecimalText, Decimal { .. }) => DecimalText,
            (Struct(mut a), Struct(b)) => {
                for c in b {
                    merge_field(&mut a, &c.name, c.ty);
                }
                Struct(a)
            }
            (List(a), List(b)) => List(Box::new(a.merge(*b))),
            _ => Json,
        }
    }

    /// Replaces what inference could not decide (`Unknown`) by `Json`, and gives
    /// decimals the full precision 38 so that larger values still fit.
    fn finalize(self) -> ColumnType {
        match self {
            ColumnType::Unknown => ColumnType::Json,
            ColumnType::Decimal { scale, .. } => ColumnType::Decimal {
                precision: 38,
                scale,
            },
            ColumnType::Struct(columns) if columns.is_empty() => ColumnType::Json,
            ColumnType::Struct(columns) => ColumnType::Struct(
                columns
                    .into_iter()
                    .map(|c| Column {
                        name: c.name,
                        ty: c.ty.finalize(),
                    })
                    .collect(),
            ),
            ColumnType::List(item) => ColumnType::List(Box::new(item.finalize())),
            t => t,
        }
    }
}

fn merge_field(columns: &mut Vec<Column>, name: &str, ty: ColumnType) {
    match columns.iter_mut().find(|c| c.name == name) {
        Some(c) => {
            let old = std::mem::replace(&mut c.ty, ColumnType::Unknown);
            c.ty = old.merge(ty);
        }
        None => columns.push(Column {
            name: name.to_string(),
            ty,
        }),
    }
}

/// The schema of a collection's documents, and how they are decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentSchema {
    /// Top-level fields, `_id` first.
    pub columns: Vec<Column>,
    pub nested: NestedMode,
    pub on_mismatch: MismatchPolicy,
    /// The key field (`_id` by default), encoded into `_key`.
    pub key: String,
}

impl DocumentSchema {
    /// Infers columns from sampled documents, then applies the declared types.
    pub fn infer<'a>(
        sample: impl IntoIterator<Item = &'a RawDocument>,
        declared: &[(String, ColumnType)],
        nested: NestedMode,
        on_mismatch: MismatchPolicy,
        key: &str,
    ) -> Self {
        let mut columns: Vec<Column> = vec![Column {
            name: "_id".into(),
            ty: ColumnType::Unknown,
        }];
        for doc in sample {
            for (name, value) in doc.iter().flatten() {
                merge_field(&mut columns, name, ColumnType::of_value(value, nested, 1));
            }
        }
        for (name, ty) in declared {
            match columns.iter_mut().find(|c| &c.name == name) {
                Some(c) => c.ty = ty.clone(),
                None => columns.push(Column {
                    name: name.clone(),
                    ty: ty.clone(),
                }),
            }
        }
        let columns = columns
            .into_iter()
            .filter(|c| c.name != OVERFLOW_COLUMN && c.name != KEY_COLUMN && c.name != HASH_COLUMN)
            .map(|c| Column {
                name: c.name,
                ty: c.ty.finalize(),
            })
            .collect();
        Self {
            columns,
            nested,
            on_mismatch,
            key: key.to_string(),
        }
    }

    /// The Arrow schema of the decoded batches: the columns, then `_overflow`
    /// (with the `overflow` policy), `_key` and `_hash`.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.ty.arrow(), c.name != self.key))
            .collect();
        if self.on_mismatch == MismatchPolicy::Overflow {
            fields.push(Field::new(OVERFLOW_COLUMN, DataType::Utf8, true));
        }
        fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
        fields.push(Field::new(HASH_COLUMN, DataType::UInt64, false));
        Arc::new(Schema::new(fields))
    }
}
