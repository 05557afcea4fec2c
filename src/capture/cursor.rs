//! The cursor of watermark capture (an `updated_at`-style column): its values,
//! the tracker of the largest value and boundary keys, and the extract query.
//!
//! Each run reads `cursor >= last watermark`. `>=` and not `>`: a row committed after
//! the last run with the same timestamp as the watermark must not be lost. The rows
//! that were already loaded at exactly the watermark (the *boundary*) are remembered
//! by key, so that when they are read again they are dropped instead of rewritten:
//! a rerun with no source changes changes nothing.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray, BooleanArray, Int64Array, UInt32Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Date32Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};

pub use super::position::{CursorValue, SeenRow};
use crate::config::Lookback;
use crate::source::horizon::CommitHorizon;
use crate::source::sql::Dialect;

/// Rows remembered at most (those at or near the watermark); rows beyond it
/// are read again and re-merged next run (still correct, just not a no-op).
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

    /// The commit horizon in this cursor's units; `None` for an integer cursor,
    /// which time does not bound.
    pub fn horizon(&self, horizon: &CommitHorizon) -> Option<i64> {
        match self.kind {
            CursorKind::Timestamp { utc: true } => Some(horizon.utc_micros),
            CursorKind::Timestamp { utc: false } => Some(horizon.local_micros),
            CursorKind::Date => Some(horizon.local_micros.div_euclid(DAY_MICROS)),
            CursorKind::Integer => None,
        }
    }

    /// `lookback` in this cursor's units: microseconds, whole days (rounded up)
    /// or a count of values.
    pub fn lookback(&self, name: &str, lookback: Option<Lookback>) -> Result<i64, String> {
        match (self.kind, lookback) {
            (_, None) => Ok(0),
            (CursorKind::Timestamp { .. }, Some(Lookback::Span { micros })) => Ok(micros),
            (CursorKind::Date, Some(Lookback::Span { micros })) => {
                Ok((micros + DAY_MICROS - 1).div_euclid(DAY_MICROS))
            }
            (CursorKind::Integer, Some(Lookback::Count(count))) => Ok(count),
            (CursorKind::Integer, Some(Lookback::Span { .. })) => Err(format!(
                "lookback is a span of time but the cursor {name:?} is an integer: give a count of its values (lookback = \"1000\")"
            )),
            (_, Some(Lookback::Count(_))) => Err(format!(
                "lookback is a count but the cursor {name:?} is a date or timestamp: give a span (lookback = \"15m\")"
            )),
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

/// What a watermark run starts from: the stored position and the settings
/// that bound how far it may move.
pub struct TrackerStart<'a> {
    /// The stored watermark.
    pub previous: Option<CursorValue>,
    /// Rows loaded at or above it (key and content hash).
    pub seen: &'a [SeenRow],
    /// Keys of rows at exactly the watermark, as manifests before the content
    /// hash stored them: dropped when read again at that value.
    pub legacy_boundary: &'a [Vec<String>],
    /// `lookback` in the cursor's units (see [`CursorColumn::lookback`]).
    pub lookback: i64,
    /// The source's commit horizon in the cursor's units: the watermark does not
    /// move past it (see `source::horizon`).
    pub horizon: Option<i64>,
}

const DAY_MICROS: i64 = 86_400_000_000;

/// The lowest cursor value a run reads: the stored watermark, less the
/// lookback in its units. Errors when the lookback does not fit the cursor.
pub fn read_from(
    cursor: &str,
    previous: Option<CursorValue>,
    lookback: Option<Lookback>,
) -> Result<Option<CursorValue>, String> {
    let Some(previous) = previous else {
        return Ok(None);
    };
    let kind = match previous {
        CursorValue::Timestamp { utc, .. } => CursorKind::Timestamp { utc },
        CursorValue::Date { .. } => CursorKind::Date,
        CursorValue::Integer { .. } => CursorKind::Integer,
    };
    let column = CursorColumn { index: 0, kind };
    let back = column.lookback(cursor, lookback)?;
    Ok(Some(column.to_value(
        CursorColumn::raw(&previous).saturating_sub(back),
    )))
}

/// Follows one extract: drops rows read again unchanged, tracks the new
/// watermark (the largest cursor value, held at the commit horizon) and
/// remembers the rows the next run will read again.
pub struct WatermarkTracker {
    cursor: CursorColumn,
    key_columns: Vec<usize>,
    previous: Option<i64>,
    /// Rows loaded last time that this run reads again: key → content hash
    /// (`None` for a legacy boundary key, which matches at the watermark only).
    previous_seen: HashMap<Vec<String>, Option<u64>>,
    lookback: i64,
    horizon: Option<i64>,
    max: Option<i64>,
    /// Rows at or above the current floor, by cursor value.
    window: BTreeMap<i64, Vec<SeenRow>>,
    window_rows: usize,
    /// Whole rows in Arrow's row format, for the content hash.
    rows: Option<RowConverter>,
    /// Rows read again and dropped because the lake has them as they are.
    pub skipped: u64,
    /// Rows with a NULL cursor (loaded, but they cannot move the watermark).
    pub null_cursor_rows: u64,
}

/// What an extract ends with.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerEnd {
    pub watermark: Option<CursorValue>,
    pub seen: Vec<SeenRow>,
    /// The largest cursor value read, when the commit horizon held the
    /// watermark below it.
    pub held_from: Option<CursorValue>,
}

impl WatermarkTracker {
    pub fn new(cursor: CursorColumn, key_columns: Vec<usize>, start: TrackerStart<'_>) -> Self {
        let previous = start.previous.as_ref().map(CursorColumn::raw);
        let mut previous_seen: HashMap<Vec<String>, Option<u64>> = start
            .legacy_boundary
            .iter()
            .map(|k| (k.clone(), None))
            .collect();
        previous_seen.extend(start.seen.iter().map(|r| (r.key.clone(), Some(r.hash))));
        Self {
            cursor,
            key_columns,
            previous,
            previous_seen,
            lookback: start.lookback.max(0),
            horizon: start.horizon,
            max: None,
            window: BTreeMap::new(),
            window_rows: 0,
            rows: None,
            skipped: 0,
            null_cursor_rows: 0,
        }
    }

    /// The lowest cursor value the next run can read: rows below it need not be
    /// remembered. It only rises as the extract goes on.
    fn floor(&self) -> Option<i64> {
        let max = self.max?;
        let top = self.horizon.map_or(max, |h| max.min(h));
        let top = self.previous.map_or(top, |p| top.max(p));
        Some(top.saturating_sub(self.lookback))
    }

    /// Returns `batch` without the rows already loaded as they are, and
    /// advances the new watermark.
    pub fn observe(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let values = self.cursor.values(&batch)?;
        self.null_cursor_rows += values.null_count() as u64;
        if let Some(batch_max) = arrow::compute::max(&values) {
            self.max = Some(self.max.map_or(batch_max, |m| m.max(batch_max)));
        }
        let floor = self.floor();
        // Rows whose key and content matter: those the next run reads again, and
        // any row this run may have loaded before.
        let check_all = !self.previous_seen.is_empty();
        let needed: Vec<u32> = (0..batch.num_rows())
            .filter(|&row| {
                values.is_valid(row) && (check_all || floor.is_some_and(|f| values.value(row) >= f))
            })
            .map(|row| row as u32)
            .collect();
        if needed.is_empty() {
            return Ok(batch);
        }
        let keys = key_strings_of(&batch, &self.key_columns, &needed)?;
        let hashes = self.row_hashes(&batch, &needed)?;
        let mut keep = vec![true; batch.num_rows()];
        for ((row, key), hash) in needed.iter().map(|&r| r as usize).zip(keys).zip(hashes) {
            let value = values.value(row);
            let loaded = match self.previous_seen.get(&key) {
                Some(Some(seen)) => *seen == hash,
                Some(None) => Some(value) == self.previous,
                None => false,
            };
            if loaded {
                keep[row] = false;
                self.skipped += 1;
            }
            if floor.is_some_and(|f| value >= f) && self.window_rows < MAX_BOUNDARY_KEYS {
                self.window
                    .entry(value)
                    .or_default()
                    .push(SeenRow { key, hash });
                self.window_rows += 1;
            }
        }
        if let Some(floor) = floor {
            let kept = self.window.split_off(&floor);
            self.window_rows -= self.window.values().map(Vec::len).sum::<usize>();
            self.window = kept;
        }
        if keep.iter().all(|k| *k) {
            return Ok(batch);
        }
        filter_record_batch(&batch, &BooleanArray::from(keep)).map_err(|e| e.to_string())
    }

    /// xxh3 of each `rows` row of `batch` in Arrow's row format.
    fn row_hashes(&mut self, batch: &RecordBatch, rows: &[u32]) -> Result<Vec<u64>, String> {
        if self.rows.is_none() {
            let fields = batch
                .schema()
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect();
            self.rows = Some(RowConverter::new(fields).map_err(|e| e.to_string())?);
        }
        let converter = self.rows.as_ref().expect("set above");
        let picked = arrow::compute::take_record_batch(batch, &UInt32Array::from(rows.to_vec()))
            .map_err(|e| e.to_string())?;
        let converted = converter
            .convert_columns(picked.columns())
            .map_err(|e| e.to_string())?;
        Ok(converted
            .iter()
            .map(|row| twox_hash::XxHash3_64::oneshot(row.as_ref()))
            .collect())
    }

    /// The watermark and the rows to remember after this extract.
    pub fn finish(mut self) -> TrackerEnd {
        let Some(max) = self.max else {
            // Nothing read: the rows remembered last time are gone.
            return TrackerEnd {
                watermark: self.previous.map(|raw| self.cursor.to_value(raw)),
                seen: Vec::new(),
                held_from: None,
            };
        };
        let capped = self.horizon.map_or(max, |h| max.min(h));
        let watermark = self.previous.map_or(capped, |p| capped.max(p));
        let floor = watermark.saturating_sub(self.lookback);
        let mut seen: Vec<SeenRow> = self
            .window
            .split_off(&floor)
            .into_values()
            .flatten()
            .collect();
        seen.sort();
        seen.dedup();
        TrackerEnd {
            watermark: Some(self.cursor.to_value(watermark)),
            seen,
            held_from: (watermark < max).then(|| self.cursor.to_value(max)),
        }
    }
}

/// The key columns of `rows` of `batch`, as display strings.
fn key_strings_of(
    batch: &RecordBatch,
    key_columns: &[usize],
    rows: &[u32],
) -> Result<Vec<Vec<String>>, String> {
    let options = FormatOptions::default().with_null("\u{0}NULL");
    let formatters = key_columns
        .iter()
        .map(|&i| ArrayFormatter::try_new(batch.column(i).as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|&row| {
            formatters
                .iter()
                .map(|f| f.value(row as usize).to_string())
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

    fn start<'a>(previous: Option<CursorValue>, seen: &'a [SeenRow]) -> TrackerStart<'a> {
        TrackerStart {
            previous,
            seen,
            legacy_boundary: &[],
            lookback: 0,
            horizon: None,
        }
    }

    fn ts(micros: i64) -> Option<CursorValue> {
        Some(CursorValue::Timestamp { micros, utc: true })
    }

    #[test]
    fn rows_read_again_unchanged_are_skipped_and_watermark_advances() {
        let b = batch(vec![1, 2, 3], vec![10, 20, 20]);
        let cursor = CursorColumn::new(&b.schema(), "updated_at").unwrap();
        let mut first = WatermarkTracker::new(cursor.clone(), vec![0], start(None, &[]));
        assert_eq!(first.observe(b).unwrap().num_rows(), 3);
        let end = first.finish();
        assert_eq!(end.watermark, ts(20));
        let keys: Vec<_> = end.seen.iter().map(|r| r.key[0].clone()).collect();
        assert_eq!(keys, vec!["2", "3"]);

        // Next run re-reads ids 2 and 3 (unchanged) and a new id 4 at the same time.
        let mut second = WatermarkTracker::new(cursor, vec![0], start(end.watermark, &end.seen));
        let out = second
            .observe(batch(vec![2, 3, 4], vec![20, 20, 20]))
            .unwrap();
        assert_eq!(out.num_rows(), 1);
        assert_eq!(second.skipped, 2);
        let end2 = second.finish();
        assert_eq!(end2.watermark, end.watermark);
        assert_eq!(end2.seen.len(), 3);
    }

    #[test]
    fn a_changed_row_at_the_watermark_is_not_skipped() {
        let b = batch(vec![1, 2], vec![10, 20]);
        let cursor = CursorColumn::new(&b.schema(), "updated_at").unwrap();
        let mut first = WatermarkTracker::new(cursor.clone(), vec![0], start(None, &[]));
        first.observe(b).unwrap();
        let end = first.finish();
        // Same key and cursor, another content: a row of another shape hashes
        // differently, so build one with another id column value and compare.
        let mut seen = end.seen.clone();
        seen[0].hash ^= 1;
        let mut second = WatermarkTracker::new(cursor, vec![0], start(end.watermark, &seen));
        let out = second.observe(batch(vec![2], vec![20])).unwrap();
        assert_eq!(out.num_rows(), 1, "content differs: the row is loaded");
    }

    #[test]
    fn the_horizon_holds_the_watermark_and_remembers_the_rows_above_it() {
        let b = batch(vec![1, 2, 3, 4], vec![10, 15, 30, 40]);
        let cursor = CursorColumn::new(&b.schema(), "updated_at").unwrap();
        let mut run = WatermarkTracker::new(
            cursor,
            vec![0],
            TrackerStart {
                horizon: Some(25),
                ..start(None, &[])
            },
        );
        run.observe(b).unwrap();
        let end = run.finish();
        assert_eq!(end.watermark, ts(25));
        assert_eq!(end.held_from, ts(40));
        let keys: Vec<_> = end.seen.iter().map(|r| r.key[0].clone()).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"3".to_string()) && keys.contains(&"4".to_string()));
    }

    #[test]
    fn lookback_remembers_the_window_below_the_watermark() {
        let b = batch(vec![1, 2, 3, 4], vec![10, 15, 30, 40]);
        let cursor = CursorColumn::new(&b.schema(), "updated_at").unwrap();
        let mut run = WatermarkTracker::new(
            cursor.clone(),
            vec![0],
            TrackerStart {
                lookback: 12,
                ..start(None, &[])
            },
        );
        run.observe(b).unwrap();
        let end = run.finish();
        assert_eq!(end.watermark, ts(40));
        assert_eq!(end.seen.len(), 2, "rows at 30 and 40 are within 12 of 40");
        assert_eq!(
            read_from(
                "updated_at",
                end.watermark,
                Some(Lookback::Span { micros: 12 })
            )
            .unwrap(),
            ts(28)
        );
        assert!(cursor
            .lookback("updated_at", Some(Lookback::Count(5)))
            .is_err());
    }

    #[test]
    fn legacy_boundary_keys_skip_only_at_the_watermark() {
        let b = batch(vec![2, 3], vec![20, 21]);
        let cursor = CursorColumn::new(&b.schema(), "updated_at").unwrap();
        let legacy = vec![vec!["2".to_string()], vec!["3".to_string()]];
        let mut run = WatermarkTracker::new(
            cursor,
            vec![0],
            TrackerStart {
                legacy_boundary: &legacy,
                ..start(ts(20), &[])
            },
        );
        let out = run.observe(b).unwrap();
        assert_eq!(out.num_rows(), 1, "id 3 moved past the watermark: loaded");
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
