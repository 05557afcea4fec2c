//! Value-by-value comparison for the type fidelity tests: the source, the lake's
//! Parquet files and ClickHouse each render a value as text, and [`canonical`]
//! removes the differences of spelling that are not differences of value.
#![allow(dead_code)]

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// How to compare a column's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Exactly.
    Text,
    /// As a decimal number: trailing fraction zeros do not count.
    Decimal,
    /// As an `f32` / `f64` (`inf`, `Infinity` and `NaN` spellings agree).
    Float32,
    Float64,
    /// Hex bytes, case-insensitive.
    Hex,
    /// `YYYY-MM-DD HH:MM:SS.ffffff`.
    Timestamp,
    /// A JSON document; numbers compared as `f64`.
    Json,
}

pub const NULL: &str = "\\N";

/// The canonical text of `value` (or `\N`).
pub fn canonical(kind: Kind, value: &str) -> String {
    if value == NULL {
        return NULL.into();
    }
    match kind {
        Kind::Text | Kind::Timestamp => value.into(),
        Kind::Hex => value.to_ascii_lowercase(),
        Kind::Decimal => {
            let mut v = value.to_string();
            if v.contains('.') {
                v = v.trim_end_matches('0').trim_end_matches('.').to_string();
            }
            if v == "-0" {
                v = "0".into();
            }
            v
        }
        Kind::Float32 => float_text(value.parse::<f32>().map(f64::from), value),
        Kind::Float64 => float_text(value.parse::<f64>(), value),
        Kind::Json => match serde_json::from_str::<serde_json::Value>(value) {
            Ok(v) => numbers_as_f64(v).to_string(),
            Err(_) => format!("not JSON: {value}"),
        },
    }
}

fn float_text(parsed: Result<f64, std::num::ParseFloatError>, raw: &str) -> String {
    match parsed {
        Ok(f) if f.is_nan() => "NaN".into(),
        Ok(f) => format!("{f:?}"),
        Err(_) => format!("not a float: {raw}"),
    }
}

fn numbers_as_f64(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

/// The values of `columns` in `batches` as text, one row per element, ordered by the
/// integer column `key`.
pub fn parquet_values(batches: &[RecordBatch], columns: &[&str], key: &str) -> Vec<Vec<String>> {
    let mut rows: Vec<(i64, Vec<String>)> = Vec::new();
    for batch in batches {
        let key_col =
            arrow::compute::cast(batch.column_by_name(key).unwrap(), &DataType::Int64).unwrap();
        let key_col = key_col.as_primitive::<arrow::datatypes::Int64Type>();
        for row in 0..batch.num_rows() {
            let values = columns
                .iter()
                .map(|c| {
                    value_text(
                        batch
                            .column_by_name(c)
                            .unwrap_or_else(|| panic!("no column {c}")),
                        row,
                    )
                })
                .collect();
            rows.push((key_col.value(row), values));
        }
    }
    rows.sort_by_key(|(k, _)| *k);
    rows.into_iter().map(|(_, v)| v).collect()
}

fn value_text(array: &dyn Array, row: usize) -> String {
    if array.is_null(row) {
        return NULL.into();
    }
    match array.data_type() {
        DataType::Binary => hex(array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => hex(array.as_binary::<i64>().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let micros = array
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(row);
            chrono::DateTime::from_timestamp_micros(micros)
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S%.6f")
                .to_string()
        }
        DataType::List(_) => list_json(&array.as_list::<i32>().value(row)),
        DataType::LargeList(_) => list_json(&array.as_list::<i64>().value(row)),
        DataType::Float32 => format!(
            "{:?}",
            array
                .as_primitive::<arrow::datatypes::Float32Type>()
                .value(row)
        ),
        DataType::Float64 => format!(
            "{:?}",
            array
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(row)
        ),
        _ => ArrayFormatter::try_new(array, &FormatOptions::default())
            .unwrap()
            .value(row)
            .to_string(),
    }
}

fn list_json(values: &dyn Array) -> String {
    use serde_json::Value;
    let items: Vec<Value> = (0..values.len())
        .map(|i| {
            if values.is_null(i) {
                return Value::Null;
            }
            let text = value_text(values, i);
            match values.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Value::String(text),
                DataType::Boolean => Value::Bool(text == "true"),
                _ => serde_json::from_str(&text).unwrap_or(Value::String(text)),
            }
        })
        .collect();
    Value::Array(items).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
