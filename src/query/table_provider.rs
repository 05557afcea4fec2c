//! The lake as DataFusion tables: [`LakeTable`] reads exactly the live files of
//! a table's manifest, each tagged with the day of its partition folder, and
//! prunes whole days on filters of the `<partition column>_day` column before
//! any file is opened. `sluice query`, `sluice shell` and the SQL models all read
//! the lake through it ([`lake_session`], [`register_lake_store`]).

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Date32Array, RecordBatch};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{DFSchema, ScalarValue, Statistics};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectMeta;

use crate::error::{redact, Error, Result};
use crate::lake::manifest::Manifest;
use crate::lake::writer::parse_day;
use crate::lake::{Lake, LakeLocation};

/// A DataFusion session for SQL over lake tables: DataFusion's own rules, and
/// [`SortWithinDays`](super::sort_within_days::SortWithinDays), which sorts rows read
/// in day order one day at a time.
pub fn lake_session(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(super::sort_within_days::SortWithinDays))
        .build();
    SessionContext::new_with_state(state)
}

/// Registers the lake's object store with `ctx`; returns the URL that
/// [`LakeTable::new`] needs.
pub fn register_lake_store(ctx: &SessionContext, lake: &Lake) -> Result<ObjectStoreUrl> {
    Ok(match lake.location() {
        LakeLocation::S3 { bucket, .. } => {
            let url = object_store_url(&format!("s3://{bucket}"))?;
            ctx.register_object_store(url.as_ref(), Arc::clone(lake.store()));
            url
        }
        LakeLocation::Local { .. } => {
            let url = object_store_url("file://")?;
            ctx.register_object_store(url.as_ref(), Arc::new(LocalFileSystem::new()));
            url
        }
    })
}

fn object_store_url(url: &str) -> Result<ObjectStoreUrl> {
    ObjectStoreUrl::parse(url).map_err(|e| Error::Query(format!("lake URL {url}: {e}")))
}

/// DataFusion's message, as a user-facing error. DataFusion prefixes SQL errors
/// with their kind ("SQL error: …", "Error during planning: …"), which is kept.
pub(super) fn query_error(e: &DataFusionError) -> Error {
    Error::Query(redact(&e.to_string()))
}

/// One committed lake table: the live files of its manifest, each tagged with the
/// day of its partition.
#[derive(Debug)]
pub struct LakeTable {
    /// Columns stored in the files.
    file_schema: SchemaRef,
    /// `file_schema` plus the day column.
    schema: SchemaRef,
    /// `<partition column>_day`.
    day_column: String,
    store_url: ObjectStoreUrl,
    /// Live files in day order.
    pub(super) files: Vec<LiveFile>,
}

#[derive(Debug, Clone)]
pub(super) struct LiveFile {
    /// Days since the epoch, as `Date32`.
    day: i32,
    location: Path,
    bytes: u64,
    /// From the manifest: the scan's row count, which the planner needs to build
    /// a hash join on its smaller side.
    rows: u64,
}

impl LakeTable {
    /// The table of `manifest`, whose files live in the store at `store_url`.
    pub fn new(lake: &Lake, store_url: ObjectStoreUrl, manifest: &Manifest) -> Result<Self> {
        let table = &manifest.table;
        let fields = manifest
            .schema
            .iter()
            .map(|column| {
                DataType::from_str(&column.arrow_type)
                    .map(|t| Field::new(&column.name, t, column.nullable))
                    .map_err(|e| {
                        Error::Query(format!(
                            "table {table}: column {} has type {:?} in the manifest, which Arrow cannot parse: {e}",
                            column.name, column.arrow_type
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let file_schema = Arc::new(Schema::new(fields));
        if manifest.partition_column.is_empty() {
            // An unpartitioned table (a model without partition_by): no day column.
            return Self::unpartitioned(lake, store_url, manifest, file_schema);
        }
        let day_column = format!("{}_day", manifest.partition_column);
        if file_schema.field_with_name(&day_column).is_ok() {
            return Err(Error::Query(format!(
                "table {table}: the files already have a column {day_column}, the name sluice gives the partition day"
            )));
        }
        let mut fields = file_schema.fields().to_vec();
        fields.push(Arc::new(Field::new(&day_column, DataType::Date32, false)));
        let schema = Arc::new(Schema::new(fields));

        let root = match lake.location() {
            // The local filesystem store is rooted at `/`; the lake's own store at
            // the lake folder.
            LakeLocation::Local { root } => Some(
                Path::from_absolute_path(root)
                    .map_err(|e| Error::Query(format!("lake folder {}: {e}", root.display())))?,
            ),
            LakeLocation::S3 { .. } => None,
        };
        let mut files = Vec::new();
        for (day_text, partition) in &manifest.partitions {
            let day = parse_day(day_text).ok_or_else(|| {
                Error::Query(format!(
                    "table {table}: partition {day_text:?} in the manifest is not a YYYY-MM-DD day"
                ))
            })?;
            for file in &partition.files {
                let relative = crate::lake::join(&lake.table_path(table), &file.path);
                let location = match &root {
                    Some(root) => relative.parts().fold(root.clone(), |p, part| p.join(part)),
                    None => relative,
                };
                files.push(LiveFile {
                    day,
                    location,
                    bytes: file.bytes,
                    rows: file.rows,
                });
            }
        }
        Ok(Self {
            file_schema,
            schema,
            day_column,
            store_url,
            files,
        })
    }

    /// A table whose manifest has no partition column: its files, no day column.
    fn unpartitioned(
        lake: &Lake,
        store_url: ObjectStoreUrl,
        manifest: &Manifest,
        file_schema: SchemaRef,
    ) -> Result<Self> {
        let mut one_day = manifest.clone();
        let mut all = crate::lake::manifest::PartitionEntry::default();
        for partition in manifest.partitions.values() {
            all.rows += partition.rows;
            all.files.extend(partition.files.iter().cloned());
        }
        one_day.partitions = [("1970-01-01".to_string(), all)].into();
        one_day.partition_column = "_unpartitioned".into();
        let mut table = Self::new(lake, store_url, &one_day)?;
        table.schema = Arc::clone(&file_schema);
        table.file_schema = file_schema;
        table.day_column = String::new();
        Ok(table)
    }

    /// The partition days of the live files (days since 1970-01-01).
    pub fn days(&self) -> impl Iterator<Item = i32> + '_ {
        self.files.iter().map(|f| f.day)
    }

    /// Keeps only the files of the days for which `keep` is true.
    pub fn retain_days(&mut self, keep: impl Fn(i32) -> bool) {
        self.files.retain(|f| keep(f.day));
    }

    /// Whether `filter` can be decided from the day column alone.
    fn is_day_filter(&self, filter: &Expr) -> bool {
        !self.day_column.is_empty() && expr_applicable_for_cols(&[self.day_column.as_str()], filter)
    }

    /// The files whose day passes every filter in `day_filters`, evaluated once on
    /// a batch holding each file's day.
    fn files_passing(
        &self,
        state: &dyn Session,
        day_filters: &[Expr],
    ) -> datafusion::error::Result<Vec<LiveFile>> {
        let Some(filter) = conjunction(day_filters.iter().cloned()) else {
            return Ok(self.files.clone());
        };
        let day_schema = Arc::new(Schema::new(vec![Field::new(
            &self.day_column,
            DataType::Date32,
            false,
        )]));
        let days = Date32Array::from_iter_values(self.files.iter().map(|f| f.day));
        let batch = RecordBatch::try_new(Arc::clone(&day_schema), vec![Arc::new(days)])?;
        let predicate = state.create_physical_expr(filter, &DFSchema::try_from(day_schema)?)?;
        let keep = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
        let keep = keep.as_boolean();
        Ok(self
            .files
            .iter()
            .enumerate()
            // A null outcome (e.g. comparing with NULL) keeps nothing, as in WHERE.
            .filter(|(i, _)| keep.is_valid(*i) && keep.value(*i))
            .map(|(_, f)| f.clone())
            .collect())
    }

    /// The index in the files' schema of the partition column when it is a
    /// date: each file then holds one value of it, its day.
    fn date_partition_column(&self) -> Option<usize> {
        let name = self.day_column.strip_suffix("_day")?;
        let index = self.file_schema.index_of(name).ok()?;
        (self.file_schema.field(index).data_type() == &DataType::Date32).then_some(index)
    }

    /// The orders each partition of a scan is read in (files in day order): by
    /// the day column, and by the partition column itself when it is a date.
    /// Declared to DataFusion, they spare a model partitioned by that day the
    /// sort before writing, and let a window partitioned by it sort each day
    /// alone.
    fn orderings(&self, date_column: Option<usize>) -> Vec<LexOrdering> {
        if self.day_column.is_empty() {
            return Vec::new();
        }
        // As SQL's `ORDER BY day` asks (the day has no NULLs).
        let ascending = SortOptions {
            descending: false,
            nulls_first: false,
        };
        let by = |name: &str, index: usize| {
            LexOrdering::new([PhysicalSortExpr::new(
                Arc::new(Column::new(name, index)),
                ascending,
            )])
        };
        let day_index = self.file_schema.fields().len();
        let mut orderings: Vec<LexOrdering> = by(&self.day_column, day_index).into_iter().collect();
        if let Some(index) = date_column {
            orderings.extend(by(self.file_schema.field(index).name(), index));
        }
        orderings
    }

    async fn plan_scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let day_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| self.is_day_filter(f))
            .cloned()
            .collect();
        let files = self.files_passing(state, &day_filters)?;
        tracing::debug!(
            files = files.len(),
            of = self.files.len(),
            "Partition filters applied."
        );
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        // Exact: the manifest counts every live file's rows. Without a row count
        // DataFusion builds a hash join on the side written first in the SQL,
        // e.g. all of a fact table in `fact LEFT JOIN dim`.
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let statistics =
            Statistics::new_unknown(&self.schema).with_num_rows(Precision::Exact(rows as usize));
        // Spread the files over the session's partitions in day order (file i to
        // partition i mod n), so that each partition reads its days in order;
        // DataFusion splits large files further by byte range, keeping that order.
        let groups = state.config().target_partitions().clamp(1, files.len());
        let date_column = self.date_partition_column();
        let mut file_groups = vec![Vec::new(); groups];
        for (i, file) in files.into_iter().enumerate() {
            let meta = ObjectMeta {
                location: file.location,
                // Live files are never rewritten in place (new runs write new names).
                last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                size: file.bytes,
                e_tag: None,
                version: None,
            };
            let scanned = PartitionedFile::new_from_meta(meta);
            file_groups[i % groups].push(if self.day_column.is_empty() {
                scanned
            } else {
                // What the manifest knows of the file: its rows, and, for a date
                // partition column, that every row holds the file's day. DataFusion
                // checks the declared orderings against these.
                let mut statistics = Statistics::new_unknown(&self.file_schema)
                    .with_num_rows(Precision::Exact(file.rows as usize));
                if let Some(column) = date_column {
                    let day = ScalarValue::Date32(Some(file.day));
                    let column = &mut statistics.column_statistics[column];
                    column.min_value = Precision::Exact(day.clone());
                    column.max_value = Precision::Exact(day);
                    column.null_count = Precision::Exact(0);
                }
                scanned
                    .with_partition_values(vec![ScalarValue::Date32(Some(file.day))])
                    .with_statistics(Arc::new(statistics))
            });
        }
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let partition_cols = if self.day_column.is_empty() {
            Vec::new()
        } else {
            vec![Arc::new(Field::new(
                &self.day_column,
                DataType::Date32,
                false,
            ))]
        };
        let table_schema = TableSchema::builder(Arc::clone(&self.file_schema))
            .with_table_partition_cols(partition_cols)
            .build();
        let config =
            FileScanConfigBuilder::new(self.store_url.clone(), format.file_source(table_schema))
                .with_file_groups(file_groups.into_iter().map(FileGroup::new).collect())
                .with_output_ordering(self.orderings(date_column))
                .with_statistics(statistics)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        format.create_physical_plan(state, config).await
    }
}

// Written out as `#[async_trait]` would expand it: sluice does not depend on the
// async-trait crate for this one impl.
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Day-only filters are applied exactly, per partition; the rest are also
    /// offered to the Parquet scan (row group statistics) and re-checked.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.is_day_filter(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    fn scan<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        state: &'life1 dyn Session,
        projection: Option<&'life2 Vec<usize>>,
        filters: &'life3 [Expr],
        limit: Option<usize>,
    ) -> Pin<
        Box<
            dyn Future<Output = datafusion::error::Result<Arc<dyn ExecutionPlan>>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.plan_scan(state, projection, filters, limit))
    }
}
