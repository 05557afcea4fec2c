//! The column types a MongoDB table can declare in the pipeline file
//! (`columns = { amount = "decimal(38,2)" }`) and that schema inference produces:
//! the vocabulary shared by the config's validation and the Mongo source, and how
//! each type maps to Arrow.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use serde::{Deserialize, Serialize};

/// The type of one column, as BSON values map to Arrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Utf8.
    String,
    /// Utf8, 24 hex digits.
    ObjectId,
    Int32,
    Int64,
    /// Float64.
    Double,
    Bool,
    /// Timestamp(ms, "UTC").
    Timestamp,
    /// Decimal128(precision, scale).
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Decimal128 values too wide for Decimal128(38, s), as decimal text.
    DecimalText,
    Binary,
    /// Any value, as relaxed Extended JSON text.
    Json,
    /// A nested document.
    Struct(Vec<Column>),
    /// An array.
    List(Box<ColumnType>),
    /// Only nulls (or empty arrays) seen so far; becomes `Json`. Inference only.
    Unknown,
}

/// A named column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

impl ColumnType {
    /// A type as written in the config (`int64`, `decimal(38,2)`, `json`, …).
    pub fn parse(text: &str) -> Option<ColumnType> {
        let t = text.trim().to_ascii_lowercase();
        Some(match t.as_str() {
            "string" => ColumnType::String,
            "objectid" => ColumnType::ObjectId,
            "int32" => ColumnType::Int32,
            "int64" => ColumnType::Int64,
            "double" => ColumnType::Double,
            "bool" => ColumnType::Bool,
            "timestamp" | "date" => ColumnType::Timestamp,
            "binary" => ColumnType::Binary,
            "json" => ColumnType::Json,
            _ => {
                let inner = t.strip_prefix("decimal(")?.strip_suffix(')')?;
                let (p, s) = inner.split_once(',')?;
                let precision: u8 = p.trim().parse().ok()?;
                let scale: i8 = s.trim().parse().ok()?;
                if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
                    return None;
                }
                ColumnType::Decimal { precision, scale }
            }
        })
    }

    /// The Arrow type of the column.
    pub fn arrow(&self) -> DataType {
        match self {
            ColumnType::String
            | ColumnType::ObjectId
            | ColumnType::DecimalText
            | ColumnType::Json
            | ColumnType::Unknown => DataType::Utf8,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Double => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            ColumnType::Binary => DataType::Binary,
            ColumnType::Struct(columns) => DataType::Struct(fields_of(columns)),
            ColumnType::List(item) => {
                DataType::List(Arc::new(Field::new("item", item.arrow(), true)))
            }
        }
    }
}

/// The Arrow fields of a struct's columns (all nullable).
pub(crate) fn fields_of(columns: &[Column]) -> Fields {
    columns
        .iter()
        .map(|c| Field::new(&c.name, c.ty.arrow(), true))
        .collect()
}
