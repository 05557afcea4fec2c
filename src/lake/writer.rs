//! Parquet writing: one partition folder at a time, files rolled at the target size.
//!
//! What analysts' tools get: zstd, column statistics with a page index, row groups
//! of at most `row_group_rows` rows, files of about `target_file_bytes` (a small day
//! is one file), timestamps as stored by the source's Arrow type (`+00:00` for
//! instants). With [`FileRoller::sorted_by`], rows are sorted by the key within
//! each row group, and the files declare it (`sorting_columns`): sorting buffers at
//! most one row group of rows, so a day larger than a row group is sorted within
//! each row group, not across them.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::compute::{cast, concat_batches, lexsort_to_indices, partition, take_record_batch};
use arrow::compute::{SortColumn, SortOptions};
use arrow::datatypes::{DataType, Date32Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::manifest::FileEntry;
use super::Lake;
use crate::error::{Error, Result};

/// Writer settings shared by every file of the lake.
pub fn writer_properties(row_group_rows: usize) -> WriterProperties {
    properties_builder(row_group_rows).build()
}

fn properties_builder(row_group_rows: usize) -> parquet::file::properties::WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid zstd level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_created_by(format!("sluice {}", env!("CARGO_PKG_VERSION")))
}

/// Writes the batches of one folder as `part-<run>-<n>.parquet` files, starting a
/// new file when the current one reaches the target size.
pub struct FileRoller {
    lake: Lake,
    /// Folder relative to the table folder, e.g. `created_at=2026-11-25`.
    rel_dir: String,
    /// Object path of the folder.
    dir: Path,
    file_prefix: String,
    schema: SchemaRef,
    properties: WriterProperties,
    current: Option<(AsyncArrowWriter<BufWriter>, String)>,
    seq: usize,
    files: Vec<FileEntry>,
    /// Columns to sort each row group by (indices into `schema`); empty: as given.
    sort_key: Vec<usize>,
    /// Rows waiting to be sorted and written as one row group.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    pending_bytes: usize,
}

impl FileRoller {
    /// `dir` is the object path of the folder; `rel_dir` how the manifest names it.
    pub fn new(lake: &Lake, dir: Path, rel_dir: String, run_id: &str, schema: SchemaRef) -> Self {
        Self {
            properties: writer_properties(lake.row_group_rows),
            lake: lake.clone(),
            rel_dir,
            dir,
            file_prefix: format!("part-{run_id}"),
            schema,
            current: None,
            seq: 0,
            files: Vec::new(),
            sort_key: Vec::new(),
            pending: Vec::new(),
            pending_rows: 0,
            pending_bytes: 0,
        }
    }

    /// Sorts the rows of each row group by `key` (ascending, nulls first) and
    /// records that order in the files' metadata. Key columns missing from the
    /// schema are an error.
    pub fn sorted_by(mut self, key: &[String]) -> Result<Self> {
        let mut sort_key = Vec::with_capacity(key.len());
        for name in key {
            let index = self.schema.index_of(name).map_err(|_| {
                Error::lake(format!(
                    "{}: key column {name:?} is not among the columns written",
                    self.rel_dir
                ))
            })?;
            sort_key.push(index);
        }
        // `sorting_columns` counts leaf columns: declare the order only when no
        // nested column comes before a key column (their leaves would shift it).
        let flat_before = |i: usize| {
            self.schema.fields()[..i]
                .iter()
                .all(|f| !f.data_type().is_nested())
        };
        let declared = sort_key.iter().all(|&i| flat_before(i));
        if declared && !sort_key.is_empty() {
            let columns = sort_key
                .iter()
                .map(|&i| SortingColumn {
                    column_idx: i as i32,
                    descending: false,
                    nulls_first: true,
                })
                .collect();
            self.properties = properties_builder(self.lake.row_group_rows)
                .set_sorting_columns(Some(columns))
                .build();
        }
        self.sort_key = sort_key;
        Ok(self)
    }

    /// Appends a batch (of the roller's schema).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.sort_key.is_empty() {
            return self.write_unsorted(batch).await;
        }
        // Gather up to a row group of rows (and no more than a file's worth of
        // memory), then write them sorted as one row group.
        let mut batch = batch.clone();
        while batch.num_rows() > 0 {
            let room = self.lake.row_group_rows - self.pending_rows;
            let part = batch.slice(0, room.min(batch.num_rows()));
            batch = batch.slice(part.num_rows(), batch.num_rows() - part.num_rows());
            self.pending_rows += part.num_rows();
            self.pending_bytes += part.get_array_memory_size();
            self.pending.push(part);
            if self.pending_rows >= self.lake.row_group_rows
                || self.pending_bytes >= self.lake.target_file_bytes
            {
                self.write_pending().await?;
            }
        }
        Ok(())
    }

    /// Sorts the pending rows by the key and writes them as one row group.
    async fn write_pending(&mut self) -> Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let sort_error = |e: arrow::error::ArrowError| {
            Error::lake(format!("{}: sorting rows by the key: {e}", self.rel_dir))
        };
        let rows = concat_batches(&self.schema, &self.pending).map_err(sort_error)?;
        self.pending.clear();
        self.pending_rows = 0;
        self.pending_bytes = 0;
        let columns: Vec<SortColumn> = self
            .sort_key
            .iter()
            .map(|&i| SortColumn {
                values: Arc::clone(rows.column(i)),
                options: Some(SortOptions::default()),
            })
            .collect();
        let order = lexsort_to_indices(&columns, None).map_err(sort_error)?;
        let sorted = take_record_batch(&rows, &order).map_err(sort_error)?;
        self.write_unsorted(&sorted).await?;
        if let Some((writer, _)) = self.current.as_mut() {
            // Ends the row group here, so that it holds exactly these sorted rows.
            writer.flush().await?;
        }
        Ok(())
    }

    async fn write_unsorted(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.current.is_none() {
            let name = format!("{}-{:05}.parquet", self.file_prefix, self.seq);
            self.seq += 1;
            let object = BufWriter::new(
                Arc::clone(self.lake.store()),
                self.dir.clone().join(name.as_str()),
            );
            let writer = AsyncArrowWriter::try_new(
                object,
                Arc::clone(&self.schema),
                Some(self.properties.clone()),
            )?;
            self.current = Some((writer, name));
        }
        let (writer, _) = self.current.as_mut().expect("opened above");
        writer.write(batch).await?;
        if writer.bytes_written() + writer.in_progress_size() >= self.lake.target_file_bytes {
            self.close_current().await?;
        }
        Ok(())
    }

    async fn close_current(&mut self) -> Result<()> {
        if let Some((writer, name)) = self.current.take() {
            let metadata = writer.close().await?;
            crate::fault::point("lake.file_closed");
            let rows = metadata.file_metadata().num_rows() as u64;
            // The writer has flushed everything; the file's size is what it wrote.
            let path = self.dir.clone().join(name.as_str());
            let bytes = self
                .lake
                .store()
                .head(&path)
                .await
                .map(|m| m.size)
                .map_err(|e| Error::lake(format!("{path} after writing: {e}")))?;
            self.files.push(FileEntry {
                path: format!("{}/{}", self.rel_dir, name),
                rows,
                bytes,
            });
        }
        Ok(())
    }

    /// Closes the last file and returns every file written.
    pub async fn finish(mut self) -> Result<Vec<FileEntry>> {
        self.write_pending().await?;
        self.close_current().await?;
        Ok(self.files)
    }
}

use object_store::ObjectStoreExt as _;

/// A run of rows of one batch that fall on the same day.
pub struct DaySlice {
    /// Days since 1970-01-01.
    pub day: i32,
    pub batch: RecordBatch,
}

/// Splits `batch` into runs of rows with the same day in column `column`.
///
/// Rows arrive ordered by that column, so each day is one run per batch. A NULL
/// is an error: the row would have no partition.
pub fn split_by_day(
    batch: &RecordBatch,
    column: usize,
    name: &str,
) -> std::result::Result<Vec<DaySlice>, String> {
    let values = batch.column(column);
    let days = cast(values, &DataType::Date32).map_err(|e| {
        format!(
            "partition column {name:?} ({}) has no day: {e}",
            values.data_type()
        )
    })?;
    if days.null_count() > 0 {
        return Err(format!(
            "partition column {name:?} is NULL in {} row(s); every row needs a partition day (choose a NOT NULL column or COALESCE it in `query`)",
            days.null_count()
        ));
    }
    let ranges = partition(&[Arc::clone(&days)])
        .map_err(|e| e.to_string())?
        .ranges();
    let days = days.as_primitive::<Date32Type>();
    Ok(ranges
        .into_iter()
        .map(|r| DaySlice {
            day: days.value(r.start),
            batch: batch.slice(r.start, r.end - r.start),
        })
        .collect())
}

/// `YYYY-MM-DD` of a day number.
pub fn day_string(day: i32) -> String {
    chrono::NaiveDate::from_num_days_from_ce_opt(day + 719_163)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day{day}"))
}

/// The day number of `YYYY-MM-DD`.
/// Today (UTC) as days since 1970-01-01.
pub fn today() -> i32 {
    parse_day(&chrono::Utc::now().format("%Y-%m-%d").to_string()).expect("today is a date")
}

pub fn parse_day(day: &str) -> Option<i32> {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .ok()
        .map(|d| d.num_days_from_ce() - 719_163)
}

use chrono::Datelike as _;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};

    #[test]
    fn splits_sorted_rows_into_days() {
        let day = 86_400_000_000i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 3, 4])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![0, day - 1, day, 3 * day + 5])
                        .with_timezone("+00:00"),
                ),
            ],
        )
        .unwrap();
        let slices = split_by_day(&batch, 1, "ts").unwrap();
        let got: Vec<_> = slices
            .iter()
            .map(|s| (day_string(s.day), s.batch.num_rows()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1970-01-01".to_string(), 2),
                ("1970-01-02".to_string(), 1),
                ("1970-01-04".to_string(), 1)
            ]
        );
        assert_eq!(parse_day("1970-01-04"), Some(3));
    }

    #[test]
    fn null_partition_value_is_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(arrow::array::Date32Array::from(vec![
                Some(1),
                None,
            ]))],
        )
        .unwrap();
        let err = split_by_day(&batch, 0, "d").err().unwrap();
        assert!(err.contains("NULL in 1 row"), "{err}");
    }
}
