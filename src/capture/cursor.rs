//! The cursor of watermark capture (an `updated_at`-style column): its values,
//! the tracker of the largest value and boundary keys, and the extract query.
//!
//! Each run reads `cursor >= last watermark`. `>=` and not `>`: a row committed after
//! the last run with the same timestamp as the watermark must not be lost. The rows
//! that were already loaded at exactly the watermark (the *boundary*) are remembered
//! by key, so that when they are read again they are dropped instead of rewritten:
//! a rerun with no source changes changes nothing.

use std::collections::HashSet;

use arrow::array::{Array, AsArray, BooleanArray, Int64Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Date32Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

pub use super::position::CursorValue;
use crate::source::sql::Dialect;

/// Boundary keys kept at most; beyond this many rows sharing the last cursor value
/// they are re-read and re-merged next run (still correct, just not a no-op).
pub const MAX_BOUNDARY_KEYS: usize = 100_000;

/// Reads cursor values out of the cursor column, whatever its Arrow type.
#[derive(Debug, Clone)]
pub struct CursorColumn {
    index: usize,
    kind: CursorKind,
}

#[derive(Debug, Clone, Copy)]
enum CursorKind {
    Timestamp { utc: bool },
    Date,
    Integer,
}

impl CursorColumn {
    /// Finds `name` in `schema` and checks that its type can be a cursor.
    pub fn new(schema: &arrow::datatypes::Schema, name: &str) -> Result<Self, String> {
        let index = schema
            .index_of(name)
            .map_err(|_| format!("cursor column {name:?} is not in the source's columns"))?;
        let kind = match schema.field(index).data_type() {
            DataType::Timestamp(_, tz) => CursorKind::Timestamp { utc: tz.is_some() },
            DataType::Date32 | DataType::Date64 => CursorKind::Date,
            t if crate::lake::schema::fits_i64(t) => CursorKind::Integer,
            other => {
                return Err(format!(
                "cursor column {name:?} has type {other}; use a timestamp, date or integer column"
            ))
            }
        };
        Ok(Self { index, kind })
    }

    /// The cursor values of `batch` as comparable `i64`s, with nulls.
    fn values(&self, batch: &RecordBatch) -> Result<Int64Array, String> {
        let column = batch.column(self.index);
        let err = |e: arrow::error::ArrowError| format!("cursor column: {e}");
        Ok(match column.data_type() {
            DataType::Timestamp(_, tz) => {
                let micros = cast(
                    column,
                    &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
                )
                .map_err(err)?;
                micros
                    .as_primitive::<TimestampMicrosecondType>()
                    .reinterpret_cast::<Int64Type>()
            }
            DataType::Date32 | DataType::Date64 => cast(column, &DataType::Date32)
                .map_err(err)?
                .as_primitive::<Date32Type>()
                .unary(i64::from),
            _ => cast(column, &DataType::Int64)
                .map_err(err)?
                .as_primitive::<Int64Type>()
                .clone(),
        })
    }

    fn to_value(&self, raw: i64) -> CursorValue {
        match self.kind {
            CursorKind::Timestamp { utc } => CursorValue::Timestamp { micros: raw, utc },
            CursorKind::Date => CursorValue::Date { days: raw as i32 },
            CursorKind::Integer => CursorValue::Integer { value: raw },
        }
    }

    fn raw(value: &CursorValue) -> i64 {
        match *value {
            CursorValue::Timestamp { micros, .. } => micros,
            CursorValue::Date { days } => days as i64,
            CursorValue::Integer { value } => value,
        }
    }
}

/// Follows one extract: drops re-read boundary rows, and tracks the new watermark
/// and the keys of the rows at it.
pub struct WatermarkTracker {
    cursor: CursorColumn,
    key_columns: Vec<usize>,
    previous: Option<CursorValue>,
    previous_boundary: HashSet<Vec<String>>,
    max: Option<i64>,
    boundary: Vec<Vec<String>>,
    boundary_overflow: bool,
    /// Rows read again at the old watermark and dropped because they were loaded.
    pub skipped: u64,
    /// Rows with a NULL cursor (loaded, but they cannot move the watermark).
    pub null_cursor_rows: u64,
}

impl WatermarkTracker {
    pub fn new(
        cursor: CursorColumn,
        key_columns: Vec<usize>,
        previous: Option<CursorValue>,
        previous_boundary: &[Vec<String>],
    ) -> Self {
        Self {
            cursor,
            key_columns,
            max: previous.as_ref().map(CursorColumn::raw),
            previous,
            previous_boundary: previous_boundary.iter().cloned().collect(),
            boundary: previous_boundary.to_vec(),
            boundary_overflow: false,
            skipped: 0,
            null_cursor_rows: 0,
        }
    }

    /// Returns `batch` without the rows already loaded at the old watermark, and
    /// advances the new watermark.
    pub fn observe(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let values = self.cursor.values(&batch)?;
        self.null_cursor_rows += values.null_count() as u64;
        let keys = self.key_strings(&batch)?;
        let previous_raw = self.previous.as_ref().map(CursorColumn::raw);
        let mut keep = Vec::with_capacity(batch.num_rows());
        for (row, key) in keys.into_iter().enumerate() {
            let value = values.is_valid(row).then(|| values.value(row));
            let already_loaded =
                value.is_some() && value == previous_raw && self.previous_boundary.contains(&key);
            keep.push(!already_loaded);
            if already_loaded {
                self.skipped += 1;
                continue;
            }
            let Some(value) = value else { continue };
            match self.max {
                Some(max) if value < max => {}
                Some(max) if value == max => self.push_boundary(key),
                _ => {
                    self.max = Some(value);
                    self.boundary.clear();
                    self.boundary_overflow = false;
                    self.push_boundary(key);
                }
            }
        }
        if keep.iter().all(|k| *k) {
            return Ok(batch);
        }
        filter_record_batch(&batch, &BooleanArray::from(keep)).map_err(|e| e.to_string())
    }

    fn push_boundary(&mut self, key: Vec<String>) {
        if self.boundary.len() >= MAX_BOUNDARY_KEYS {
            self.boundary_overflow = true;
        } else {
            self.boundary.push(key);
        }
    }

    fn key_strings(&self, batch: &RecordBatch) -> Result<Vec<Vec<String>>, String> {
        key_strings(batch, &self.key_columns)
    }

    /// The watermark and boundary keys to store after this extract.
    pub fn finish(mut self) -> (Option<CursorValue>, Vec<Vec<String>>) {
        if self.boundary_overflow {
            self.boundary.clear();
        }
        self.boundary.sort();
        self.boundary.dedup();
        let max = self.max.map(|raw| self.cursor.to_value(raw));
        (max, self.boundary)
    }
}

/// The key columns of every row of `batch`, as display strings.
pub fn key_strings(batch: &RecordBatch, key_columns: &[usize]) -> Result<Vec<Vec<String>>, String> {
    let options = FormatOptions::default().with_null("\u{0}NULL");
    let formatters = key_columns
        .iter()
        .map(|&i| ArrayFormatter::try_new(batch.column(i).as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((0..batch.num_rows())
        .map(|row| {
            formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect()
        })
        .collect())
}

/// The source query of one watermark extract, ordered by the partition column so
/// that the lake writer has one partition open at a time.
pub fn extract_query(
    dialect: Dialect,
    base: &str,
    cursor: &str,
    partition_by: &str,
    from: Option<&CursorValue>,
) -> String {
    let filter = match from {
        Some(value) => format!(
            " WHERE {} >= {}",
            dialect.ident(cursor),
            value.sql_literal(dialect)
        ),
        None => String::new(),
    };
    format!(
        "SELECT * FROM ({base}) AS sluice_src{filter} ORDER BY {}",
        dialect.ident(partition_by)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(ids: Vec<i64>, ts: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "updated_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("+00:00")),
            ],
        )
        .unwrap()
    }

    #[test]
    fn literals_per_dialect() {
        let v = CursorValue::Timestamp {
            micros: 1_700_000_000_000_001,
            utc: true,
        };
        assert_eq!(
            v.sql_literal(Dialect::Postgres),
            "TIMESTAMPTZ '2023-11-14 22:13:20.000001+00'"
        );
        let whole = CursorValue::Timestamp {
            micros: 1_700_000_000_000_000,
            utc: false,
        };
        assert_eq!(whole.sql_literal(Dialect::Sqlite), "'2023-11-14 22:13:20'");
        assert_eq!(
            CursorValue::Date { days: 0 }.sql_literal(Dialect::Postgres),
            "DATE '1970-01-01'"
        );
    }

    #[test]
    fn boundary_rows_are_skipped_once_and_watermark_advances() {
        let b = batch(vec![1, 2, 3], vec![10, 20, 20]);
        let cursor = CursorColumn::new(&b.schema(), "updated_at").unwrap();
        let mut first = WatermarkTracker::new(cursor.clone(), vec![0], None, &[]);
        assert_eq!(first.observe(b).unwrap().num_rows(), 3);
        let (wm, boundary) = first.finish();
        assert_eq!(
            wm,
            Some(CursorValue::Timestamp {
                micros: 20,
                utc: true
            })
        );
        assert_eq!(boundary, vec![vec!["2".to_string()], vec!["3".to_string()]]);

        // Next run re-reads ids 2 and 3 (unchanged) and a new id 4 at the same time.
        let mut second = WatermarkTracker::new(cursor, vec![0], wm, &boundary);
        let out = second
            .observe(batch(vec![2, 3, 4], vec![20, 20, 20]))
            .unwrap();
        assert_eq!(out.num_rows(), 1);
        assert_eq!(second.skipped, 2);
        let (wm2, boundary2) = second.finish();
        assert_eq!(wm2, wm);
        assert_eq!(boundary2.len(), 3);
    }

    #[test]
    fn query_uses_greater_or_equal() {
        let q = extract_query(
            Dialect::Postgres,
            "SELECT * FROM \"t\"",
            "updated_at",
            "created_at",
            Some(&CursorValue::Integer { value: 5 }),
        );
        assert_eq!(
            q,
            "SELECT * FROM (SELECT * FROM \"t\") AS sluice_src WHERE \"updated_at\" >= 5 ORDER BY \"created_at\""
        );
    }
}
