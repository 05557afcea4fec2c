//! Hard deletes of a watermark table, found without a replication log
//! (`detect_deletes = true`).
//!
//! A deleted row leaves no trace a watermark can read. So each run compares,
//! day by day of the partition column, the source's keys with the lake's by an
//! aggregate both sides compute the same way: the row count and the sum of a
//! 32-bit hash of each key (the first 8 hex digits of the MD5 of the key's text;
//! PostgreSQL and MySQL compute it in SQL, sluice over the lake's key column).
//! Only the days that disagree have their keys fetched from the source; the
//! keys the lake has and the source does not are deleted: their days are
//! rewritten without them, and ClickHouse reloads those days, so both hold
//! exactly the source's rows.
//!
//! The source side reads the whole table once (an aggregate, no rows cross the
//! network); the key fetch and the rewrites cost what the deletes touch. Keys
//! must be integer or text columns, whose text both sides spell the same way.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef};
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::path::Path;

use crate::capture::merge::conform;
use crate::capture::position::CursorValue;
use crate::error::{Error, Result};
use crate::lake::manifest::{FileEntry, KeyPrint};
use crate::lake::writer::{day_string, FileRoller};
use crate::lake::Lake;
use crate::source::sql::Dialect;

/// Rows per batch when reading keys back.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// Days whose lake keys are read at the same time.
const READ_CONCURRENCY: usize = 16;

/// Separates the columns of a composite key in its text.
const KEY_SEPARATOR: char = '\u{1f}';

/// A day's rows as both sides count them: how many, and the sum of their keys'
/// hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayPrint {
    pub rows: u64,
    pub sum: u128,
}

impl DayPrint {
    fn add(&mut self, key: &str) {
        self.rows += 1;
        self.sum += key_hash(key) as u128;
    }

    /// As the manifest caches it (`None` past 2^64, never reached below 2^32
    /// rows a day).
    pub fn to_cached(self) -> Option<KeyPrint> {
        Some(KeyPrint {
            rows: self.rows,
            sum: u64::try_from(self.sum).ok()?,
        })
    }
}

impl From<KeyPrint> for DayPrint {
    fn from(p: KeyPrint) -> Self {
        DayPrint {
            rows: p.rows,
            sum: p.sum as u128,
        }
    }
}

/// Checks that the key columns can be fingerprinted the same way on both sides.
pub fn check_key_types(table: &str, schema: &Schema, key: &[String]) -> Result<()> {
    for name in key {
        let field = schema.field_with_name(name).map_err(|_| {
            Error::capture(table, format!("key column {name:?} is not in the table"))
        })?;
        if !is_fingerprintable(field.data_type()) {
            return Err(Error::capture(
                table,
                format!(
                    "detect_deletes needs integer or text key columns; {name:?} is {} (cast it in the table's `query`)",
                    field.data_type()
                ),
            ));
        }
    }
    Ok(())
}

fn is_fingerprintable(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The 32-bit hash of a key's text: its MD5's first four bytes, big-endian.
fn key_hash(text: &str) -> u32 {
    let digest = Md5::digest(text.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The key's text in `dialect`: each column as text, joined by U+001F.
fn key_text_sql(dialect: Dialect, key: &[String]) -> String {
    let parts: Vec<String> = key
        .iter()
        .map(|k| match dialect {
            Dialect::Mysql => format!("CAST({} AS CHAR)", dialect.ident(k)),
            _ => format!("CAST({} AS text)", dialect.ident(k)),
        })
        .collect();
    match (parts.len(), dialect) {
        (1, _) => parts.into_iter().next().expect("one"),
        (_, Dialect::Mysql) => format!("CONCAT_WS(CHAR(31 USING utf8mb4), {})", parts.join(", ")),
        _ => format!("concat_ws(chr(31), {})", parts.join(", ")),
    }
}

/// The partition day of `column` (of Arrow type `t`) as days since 1970-01-01,
/// as sluice's lake writer computes it (UTC for instants).
fn day_sql(dialect: Dialect, column: &str, t: &DataType) -> String {
    let c = dialect.ident(column);
    match dialect {
        Dialect::Mysql => format!("DATEDIFF(DATE({c}), '1970-01-01')"),
        _ => {
            let date = match t {
                DataType::Timestamp(_, Some(_)) => format!("({c} AT TIME ZONE 'UTC')::date"),
                DataType::Timestamp(_, None) => format!("{c}::date"),
                _ => format!("{c}::date"),
            };
            format!("({date} - DATE '1970-01-01')")
        }
    }
}

fn hash_sql(dialect: Dialect, text: &str) -> String {
    match dialect {
        Dialect::Mysql => format!("CAST(CONV(SUBSTR(MD5({text}), 1, 8), 16, 10) AS UNSIGNED)"),
        _ => format!("('x' || substr(md5({text}), 1, 8))::bit(32)::bigint"),
    }
}

/// What the source and the lake are compared with.
pub struct Source<'a> {
    pub table: &'a str,
    pub url: &'a str,
    pub dialect: Dialect,
    /// The extract's base query (`SELECT … FROM table`, or the table's `query`).
    pub base: &'a str,
    pub partition_by: &'a str,
    /// The partition column's Arrow type.
    pub partition_type: DataType,
    pub key: &'a [String],
}

impl Source<'_> {
    /// Each day's count and key-hash sum, at the source.
    pub async fn prints(&self) -> Result<BTreeMap<i32, DayPrint>> {
        let d = self.dialect;
        let day = day_sql(d, self.partition_by, &self.partition_type);
        let hash = hash_sql(d, &key_text_sql(d, self.key));
        let (count, sum) = match d {
            Dialect::Mysql => ("CAST(COUNT(*) AS SIGNED)", "CAST(SUM(sluice_h) AS CHAR)"),
            _ => ("count(*)::bigint", "sum(sluice_h)::text"),
        };
        let sql = format!(
            "SELECT sluice_day, {count}, {sum} FROM (SELECT {day} AS sluice_day, {hash} AS sluice_h FROM ({}) AS sluice_src) AS s GROUP BY sluice_day",
            self.base
        );
        let mut prints = BTreeMap::new();
        for batch in self.query(sql).await? {
            let days = ints(self.table, batch.column(0))?;
            let rows = ints(self.table, batch.column(1))?;
            let sums = cast(batch.column(2), &DataType::Utf8)
                .map_err(|e| Error::capture(self.table, e))?;
            let sums = sums.as_string::<i32>();
            for i in 0..batch.num_rows() {
                let (Some(day), Some(rows)) = (days[i], rows[i]) else {
                    continue; // rows without a partition day: the extract refuses them
                };
                let sum = if sums.is_valid(i) {
                    sums.value(i).trim().parse::<u128>().map_err(|e| {
                        Error::capture(
                            self.table,
                            format!("key fingerprint {:?}: {e}", sums.value(i)),
                        )
                    })?
                } else {
                    0
                };
                prints.insert(
                    day as i32,
                    DayPrint {
                        rows: rows as u64,
                        sum,
                    },
                );
            }
        }
        Ok(prints)
    }

    /// The keys (as text) the source has on `days`.
    pub async fn keys(&self, days: &BTreeSet<i32>) -> Result<BTreeMap<i32, HashSet<String>>> {
        let d = self.dialect;
        let column = d.ident(self.partition_by);
        let bound = |day: i32| match self.partition_type {
            DataType::Timestamp(_, ref tz) => CursorValue::Timestamp {
                micros: day as i64 * 86_400_000_000,
                utc: tz.is_some(),
            }
            .sql_literal(d),
            _ => CursorValue::Date { days: day }.sql_literal(d),
        };
        let ranges: Vec<String> = day_ranges(days)
            .into_iter()
            .map(|(first, last)| {
                format!(
                    "({column} >= {} AND {column} < {})",
                    bound(first),
                    bound(last + 1)
                )
            })
            .collect();
        let sql = format!(
            "SELECT {} AS sluice_day, {} AS sluice_key FROM ({}) AS sluice_src WHERE {}",
            day_sql(d, self.partition_by, &self.partition_type),
            key_text_sql(d, self.key),
            self.base,
            ranges.join(" OR ")
        );
        let mut keys: BTreeMap<i32, HashSet<String>> = BTreeMap::new();
        for batch in self.query(sql).await? {
            let days = ints(self.table, batch.column(0))?;
            let texts = cast(batch.column(1), &DataType::Utf8)
                .map_err(|e| Error::capture(self.table, e))?;
            let texts = texts.as_string::<i32>();
            for (i, day) in days.into_iter().enumerate() {
                if let (Some(day), true) = (day, texts.is_valid(i)) {
                    keys.entry(day as i32)
                        .or_default()
                        .insert(texts.value(i).to_string());
                }
            }
        }
        Ok(keys)
    }

    async fn query(&self, sql: String) -> Result<Vec<RecordBatch>> {
        let stream = crate::source::sql::read(self.table, self.url, sql, READ_BATCH_ROWS).await?;
        stream.batches.try_collect().await
    }
}

fn ints(table: &str, column: &arrow::array::ArrayRef) -> Result<Vec<Option<i64>>> {
    let ints = cast(column, &DataType::Int64).map_err(|e| Error::capture(table, e))?;
    Ok(ints.as_primitive::<Int64Type>().iter().collect())
}

/// Consecutive days as `(first, last)` ranges.
fn day_ranges(days: &BTreeSet<i32>) -> Vec<(i32, i32)> {
    let mut out: Vec<(i32, i32)> = Vec::new();
    for &day in days {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == day => *last = day,
            _ => out.push((day, day)),
        }
    }
    out
}

/// The lake's side: the files of each day (committed, or written by this run).
pub struct LakeDays<'a> {
    pub table: &'a str,
    pub lake: &'a Lake,
    pub schema: &'a SchemaRef,
    pub key: &'a [String],
    /// Each day's files, as object paths and sizes.
    pub days: BTreeMap<i32, Vec<(Path, u64)>>,
}

impl LakeDays<'_> {
    /// Each day's count and key-hash sum, in the lake, but for the days in
    /// `known`.
    pub async fn prints(&self, known: &BTreeMap<i32, DayPrint>) -> Result<BTreeMap<i32, DayPrint>> {
        let days: Vec<(i32, Vec<(Path, u64)>)> = self
            .days
            .iter()
            .filter(|(d, _)| !known.contains_key(d))
            .map(|(d, f)| (*d, f.clone()))
            .collect();
        futures::stream::iter(
            days.into_iter()
                .map(|(day, files)| self.day_print(day, files)),
        )
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await
    }

    async fn day_print(&self, day: i32, files: Vec<(Path, u64)>) -> Result<(i32, DayPrint)> {
        let mut print = DayPrint::default();
        for text in self.keys_of(&files).await? {
            print.add(&text);
        }
        Ok((day, print))
    }

    /// The keys, as text, of the rows in `files`.
    pub async fn keys_of(&self, files: &[(Path, u64)]) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for (path, size) in files {
            let mut batches = self
                .lake
                .read_parquet_columns(path.clone(), *size, READ_BATCH_ROWS, Some(self.key))
                .await?;
            while let Some(batch) = batches.try_next().await? {
                keys.extend(key_texts(self.table, &batch, self.key)?);
            }
        }
        Ok(keys)
    }

    /// Writes the rows of `files` whose key is not in `deleted` through `out`.
    /// Returns the new files, the rows left out and the print of the rows kept.
    pub async fn rewrite_without(
        &self,
        files: &[(Path, u64)],
        deleted: &HashSet<String>,
        mut out: FileRoller,
    ) -> Result<(Vec<FileEntry>, u64, DayPrint)> {
        let mut removed = 0u64;
        let mut kept_print = DayPrint::default();
        for (path, size) in files {
            let mut batches = self
                .lake
                .read_parquet(path.clone(), *size, READ_BATCH_ROWS)
                .await?;
            while let Some(batch) = batches.try_next().await? {
                let batch = conform(self.table, self.schema, batch)?;
                let keep: BooleanArray = key_texts(self.table, &batch, self.key)?
                    .iter()
                    .map(|k| {
                        let kept = !deleted.contains(k);
                        if kept {
                            kept_print.add(k);
                        }
                        Some(kept)
                    })
                    .collect();
                let kept = filter_record_batch(&batch, &keep)
                    .map_err(|e| Error::capture(self.table, e))?;
                removed += (batch.num_rows() - kept.num_rows()) as u64;
                out.write(&kept).await?;
            }
        }
        Ok((out.finish().await?, removed, kept_print))
    }
}

/// Each row's key as text, spelled as PostgreSQL and MySQL cast it.
fn key_texts(table: &str, batch: &RecordBatch, key: &[String]) -> Result<Vec<String>> {
    let mut columns = Vec::with_capacity(key.len());
    for name in key {
        let column = batch.column_by_name(name).ok_or_else(|| {
            Error::capture(table, format!("key column {name:?} missing in a lake file"))
        })?;
        // Integers print in decimal, text as it is: the same as a SQL cast.
        columns.push(cast(column, &DataType::Utf8).map_err(|e| Error::capture(table, e))?);
    }
    let texts: Vec<_> = columns.iter().map(|c| c.as_string::<i32>()).collect();
    Ok((0..batch.num_rows())
        .map(|row| {
            let mut text = String::new();
            for (i, column) in texts.iter().enumerate() {
                if i > 0 {
                    text.push(KEY_SEPARATOR);
                }
                if column.is_valid(row) {
                    text.push_str(column.value(row));
                }
            }
            text
        })
        .collect())
}

/// The days whose prints differ, split in those the lake has (their keys are
/// compared) and those only the source has (rows the lake lacks).
pub fn disagreeing_days(
    source: &BTreeMap<i32, DayPrint>,
    lake: &BTreeMap<i32, DayPrint>,
) -> (BTreeSet<i32>, BTreeSet<i32>) {
    let mut compare = BTreeSet::new();
    let mut missing = BTreeSet::new();
    // A day emptied by deletes keeps an empty entry: as good as absent.
    for (day, print) in lake.iter().filter(|(_, p)| p.rows > 0) {
        if source.get(day) != Some(print) {
            compare.insert(*day);
        }
    }
    for day in source.keys() {
        if lake.get(day).is_none_or(|p| p.rows == 0) {
            missing.insert(*day);
        }
    }
    (compare, missing)
}

/// `YYYY-MM-DD` of each day, for messages.
pub fn day_names(days: &BTreeSet<i32>) -> String {
    let names: Vec<String> = days.iter().take(5).map(|&d| day_string(d)).collect();
    if days.len() > 5 {
        format!("{} … ({} days)", names.join(", "), days.len())
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;
    use std::sync::Arc;

    #[test]
    fn key_hash_is_md5_prefix() {
        // md5("42") = a1d0c6e83f027327d8461063f4ac58a6
        assert_eq!(key_hash("42"), 0xa1d0c6e8);
    }

    #[test]
    fn key_texts_join_columns() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![-7, 12])),
                Arc::new(StringArray::from(vec!["x", "é"])),
            ],
        )
        .unwrap();
        let keys = key_texts("t", &batch, &["a".into(), "b".into()]).unwrap();
        assert_eq!(keys, vec!["-7\u{1f}x", "12\u{1f}é"]);
    }

    #[test]
    fn ranges_join_consecutive_days() {
        let days: BTreeSet<i32> = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert_eq!(day_ranges(&days), vec![(1, 3), (7, 7), (9, 10)]);
    }

    #[test]
    fn days_disagree_on_count_or_sum() {
        let p = |rows, sum| DayPrint { rows, sum };
        let source: BTreeMap<_, _> = [(1, p(2, 10)), (2, p(1, 5)), (4, p(1, 1))].into();
        let lake: BTreeMap<_, _> = [(1, p(2, 10)), (2, p(2, 9)), (3, p(1, 3))].into();
        let (compare, missing) = disagreeing_days(&source, &lake);
        assert_eq!(compare, [2, 3].into());
        assert_eq!(missing, [4].into());
    }
}
