//! The lake: date-partitioned Parquet on an object store (S3 or a local folder),
//! every table a Delta table whose log holds the pipeline state beside the data,
//! so that any machine can continue the job and any Delta reader can read it.
//!
//! Layout under the lake root:
//!
//! ```text
//! <table>/_delta_log/00000000000000000007.json    one commit: files, schema, position
//! <table>/<partition_col>_day=YYYY-MM-DD/part-*.parquet
//! _sluice/staging/<table>/<run_id>/…              changed rows awaiting a merge
//! _sluice/runs/<run_id>.json                      run reports
//! ```
//!
//! **Commits cannot clobber.** A commit creates the next version of the table's
//! log only if it does not exist yet (see `delta.rs`): a writer that lost the race
//! — another run committed in between, say with the table lock bypassed or
//! expired — gets [`Error::CommitConflict`] and changes nothing.
//!
//! A table written before the lake was a Delta Lake (`<table>/_manifest.json`) is
//! read as it is, and converted in place by its next commit, which creates the
//! Delta table with every live file (the files stay where they are) and the
//! manifest's position; the manifest is deleted after it.

pub mod delta;
pub mod lock;
pub mod manifest;
pub mod schema;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::config::LakeConfig;
use crate::error::{Error, Result};
pub use delta::At;
use delta::Committed;
use manifest::Manifest;

/// The folder of a table's Delta log.
pub const DELTA_LOG: &str = "_delta_log";

/// The commit point of a table before the lake was a Delta Lake: read once, to
/// convert the table (see [`Lake::read_manifest`]).
pub const LEGACY_MANIFEST_FILE: &str = "_manifest.json";

/// Where the lake is, for tools outside sluice (ClickHouse's `s3()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeLocation {
    S3 { bucket: String, prefix: String },
    Local { root: std::path::PathBuf },
}

/// Bounded retries for S3: transient failures (connection refused, 5xx, timeouts)
/// are retried with exponential backoff for at most 30 seconds, then the run fails
/// with the cause instead of hanging for the default three minutes.
fn s3_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(200),
            max_backoff: std::time::Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: std::time::Duration::from_secs(30),
    }
}

/// A handle on the lake.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    /// Prefix inside the store under which every table lives.
    root: Path,
    location: LakeLocation,
    pub target_file_bytes: usize,
    pub row_group_rows: usize,
    /// Days the files that a commit removed stay readable (time travel), see
    /// [`Lake::vacuum`].
    pub keep_versions_days: u32,
    /// The Delta version this process last read or wrote, per table: what the
    /// next commit of that table follows.
    versions: Arc<Mutex<HashMap<String, Committed>>>,
}

impl Lake {
    /// Opens the lake named by the config; `base` resolves relative local paths.
    pub fn open(config: &LakeConfig, base: &FsPath) -> Result<Self> {
        let (store, root, location): (Arc<dyn ObjectStore>, Path, LakeLocation) =
            if let Some(rest) = config.url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Error::lake(format!(
                        "lake.url {:?} names no bucket",
                        config.url
                    )));
                }
                if let Ok(secret) = std::env::var("AWS_SECRET_ACCESS_KEY") {
                    crate::error::register_secret(&secret);
                }
                let store = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(s3_retry())
                    .build()
                    .map_err(|e| Error::lake(format!("S3 lake {bucket}: {e}")))?;
                let prefix = prefix.trim_matches('/').to_string();
                (
                    Arc::new(store),
                    Path::from(prefix.as_str()),
                    LakeLocation::S3 {
                        bucket: bucket.to_string(),
                        prefix,
                    },
                )
            } else {
                let path = config
                    .url
                    .strip_prefix("file://")
                    .unwrap_or(config.url.as_str());
                let path = base.join(path);
                std::fs::create_dir_all(&path).map_err(|e| {
                    Error::lake(format!("cannot create lake folder {}: {e}", path.display()))
                })?;
                let root = path
                    .canonicalize()
                    .map_err(|e| Error::lake(format!("lake folder {}: {e}", path.display())))?;
                let store = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| Error::lake(format!("lake folder {}: {e}", root.display())))?
                    .with_automatic_cleanup(true);
                (
                    Arc::new(store),
                    Path::default(),
                    LakeLocation::Local { root },
                )
            };
        Ok(Self {
            store,
            root,
            location,
            target_file_bytes: config.target_file_bytes,
            row_group_rows: config.row_group_rows,
            keep_versions_days: config.keep_versions_days,
            versions: Arc::default(),
        })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn location(&self) -> &LakeLocation {
        &self.location
    }

    /// `relative` (slash-separated) under the lake root.
    pub fn path(&self, relative: &str) -> Path {
        join(&self.root, relative)
    }

    /// The folder of `table`.
    pub fn table_path(&self, table: &str) -> Path {
        self.path(table)
    }

    /// The Delta log store of `table` and the table's URL.
    fn delta_log(&self, table: &str) -> Result<(deltalake_core::logstore::LogStoreRef, url::Url)> {
        let bad = |e: String| Error::lake(format!("table {table}: its location: {e}"));
        // The URL first, segment by segment from the raw names: the Delta kernel
        // finds the log from the URL, so the log store's own prefix is derived
        // from it the kernel's way (`Path::from_url_path`), whatever characters
        // the table's name has.
        let (root, mut url): (Arc<dyn ObjectStore>, url::Url) = match &self.location {
            LakeLocation::S3 { bucket, .. } => (
                Arc::clone(&self.store),
                url::Url::parse(&format!("s3://{bucket}/")).map_err(|e| bad(e.to_string()))?,
            ),
            LakeLocation::Local { root } => (
                Arc::new(LocalFileSystem::new()),
                url::Url::from_directory_path(root)
                    .map_err(|()| bad(format!("{} is not an absolute path", root.display())))?,
            ),
        };
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| bad("not a hierarchical URL".into()))?;
            segments.pop_if_empty();
            for part in self.table_path(table).parts() {
                segments.push(part.as_ref());
            }
            segments.push("");
        }
        let path = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
        Ok((delta::log_store(root, &path, &url), url))
    }

    /// Reads the committed state of `table` (its Delta log's latest version), or
    /// `None` for a table never committed. The version read is what this
    /// process's next commit of `table` follows.
    pub async fn read_manifest(&self, table: &str) -> Result<Option<Manifest>> {
        let (log, _) = self.delta_log(table)?;
        if !delta::exists(&log, table).await? {
            // A table of the manifest format is read as it is; its next commit
            // creates the Delta table (see `write_manifest`).
            let legacy = self.read_legacy_manifest(table).await?;
            let committed = match legacy {
                Some(_) => Committed::Legacy,
                None => Committed::Absent,
            };
            self.remember(table, committed);
            return Ok(legacy);
        }
        let log_dir = self.table_path(table).join(DELTA_LOG);
        let (manifest, snapshot) =
            delta::read(log, &self.store, &log_dir, table, At::Latest).await?;
        self.remember(table, Committed::Table(Box::new(snapshot)));
        Ok(Some(manifest))
    }

    /// Reads `table` as of an older version (time travel), or `None` when the
    /// table has no Delta log (it then has no history). Nothing is remembered:
    /// no commit follows such a read.
    pub async fn read_manifest_at(&self, table: &str, at: At) -> Result<Option<Manifest>> {
        let (log, _) = self.delta_log(table)?;
        if !delta::exists(&log, table).await? {
            return Ok(None);
        }
        let log_dir = self.table_path(table).join(DELTA_LOG);
        let (manifest, _) = delta::read(log, &self.store, &log_dir, table, at).await?;
        Ok(Some(manifest))
    }

    /// The files that commits of `table` removed and that are kept for reading
    /// older versions: path (relative to the table) → when removed (ms since the
    /// epoch). Of the version last read or written.
    pub async fn removed_files(&self, table: &str) -> Result<BTreeMap<String, i64>> {
        let committed = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .cloned();
        match committed {
            Some(Committed::Table(snapshot)) => {
                let (log, _) = self.delta_log(table)?;
                delta::removed(&log, &snapshot, table).await
            }
            _ => Ok(BTreeMap::new()),
        }
    }

    /// Deletes the removed files of `table` whose removal is older than
    /// `keep_versions_days` (all of them with 0): the versions that listed
    /// them can no longer be read. Returns how many were deleted.
    pub async fn vacuum(&self, table: &str) -> Result<usize> {
        let cutoff =
            chrono::Utc::now().timestamp_millis() - i64::from(self.keep_versions_days) * 86_400_000;
        let expired: Vec<String> = self
            .removed_files(table)
            .await?
            .into_iter()
            .filter(|(_, removed_at)| self.keep_versions_days == 0 || *removed_at < cutoff)
            .map(|(path, _)| path)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        tracing::debug!(table, files = expired.len(), "Vacuuming removed files.");
        self.delete_files(table, expired.iter().map(String::as_str))
            .await
    }

    /// The `_manifest.json` of a table written before the lake was a Delta Lake.
    async fn read_legacy_manifest(&self, table: &str) -> Result<Option<Manifest>> {
        let path = self.table_path(table).join(LEGACY_MANIFEST_FILE);
        match self.store.get(&path).await {
            Ok(result) => {
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| Error::store(format!("reading {path}"), e))?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::lake(format!("{path} is not a sluice manifest: {e}")))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(format!("reading {path}"), e)),
        }
    }

    /// Converts `table` from the manifest format to a Delta table now, without
    /// a run: its next commit would. `false` when there was nothing to convert.
    pub async fn upgrade(&self, table: &str) -> Result<bool> {
        let Some(manifest) = self.read_manifest(table).await? else {
            return Ok(false);
        };
        let legacy = matches!(
            self.versions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(table),
            Some(Committed::Legacy)
        );
        if legacy {
            self.write_manifest(&manifest).await?;
        }
        Ok(legacy)
    }

    fn remember(&self, table: &str, version: Committed) {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table.to_string(), version);
    }

    /// Commits `manifest` as the next version of its table's Delta log: the
    /// lake's commit point. It succeeds only if no other commit came after the
    /// version this process read (see `delta.rs`); otherwise
    /// [`Error::CommitConflict`].
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let table = manifest.table.as_str();
        let expected = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .cloned()
            .ok_or_else(|| {
                Error::lake(format!(
                    "committing {table}: the table's state was not read first (a bug in sluice)"
                ))
            })?;
        let (log, url) = self.delta_log(table)?;
        let log_dir = self.table_path(table).join(DELTA_LOG);
        let snapshot = delta::commit(
            log,
            &url,
            (&self.store, &log_dir),
            &expected,
            manifest,
            self.keep_versions_days,
        )
        .await?;
        self.remember(table, Committed::Table(Box::new(snapshot)));
        if matches!(expected, Committed::Legacy) {
            // The table's first Delta commit listed every live file of the
            // manifest: the conversion is done, the manifest goes.
            let path = self.table_path(table).join(LEGACY_MANIFEST_FILE);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(format!("deleting {path}"), e)),
            }
            tracing::info!(
                table,
                "Converted the table from sluice's manifest format to a Delta table."
            );
        }
        Ok(())
    }

    /// Deletes the table's Delta log (a reset): the next commit creates the
    /// table anew.
    pub async fn delete_manifest(&self, table: &str) -> Result<()> {
        let log_dir = format!("{table}/{DELTA_LOG}");
        let entries = self.list(&log_dir).await?;
        // The newest version first: a reader never sees a log whose first
        // versions are gone while later ones remain.
        let mut paths: Vec<String> = entries.into_iter().map(|(p, _)| p).collect();
        paths.sort();
        for rel in paths.iter().rev() {
            let path = self.path(&format!("{log_dir}/{rel}"));
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(format!("deleting {path}"), e)),
            }
        }
        let legacy = self.table_path(table).join(LEGACY_MANIFEST_FILE);
        match self.store.delete(&legacy).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::store(format!("deleting {legacy}"), e)),
        }
        self.remember(table, Committed::Absent);
        Ok(())
    }

    /// Writes any JSON document (a run report) to `relative`.
    pub async fn put_json(&self, relative: &str, value: &serde_json::Value) -> Result<()> {
        let json = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::lake(format!("encoding {relative}: {e}")))?;
        self.store
            .put(&self.path(relative), PutPayload::from(json))
            .await?;
        Ok(())
    }

    /// Every object under `relative`, as paths relative to it.
    pub async fn list(&self, relative: &str) -> Result<Vec<(String, u64)>> {
        let prefix = self.path(relative);
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                let rel = meta
                    .location
                    .prefix_match(&prefix)?
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                Some((rel, meta.size))
            })
            .collect())
    }

    /// Deletes objects under the table folder, by path relative to it.
    pub async fn delete_files<'a>(
        &self,
        table: &str,
        relative: impl IntoIterator<Item = &'a str>,
    ) -> Result<usize> {
        let base = self.table_path(table);
        let mut deleted = 0;
        for rel in relative {
            let path = join(&base, rel);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(Error::lake(format!("deleting {path}: {e}"))),
            }
        }
        Ok(deleted)
    }

    /// Deletes the Parquet files under the table folder that `manifest` does not
    /// list (all of them without a manifest) and that no kept version lists
    /// either: what an interrupted run wrote but never committed.
    pub async fn remove_orphans(
        &self,
        table: &str,
        manifest: Option<&manifest::Manifest>,
    ) -> Result<()> {
        let mut live: BTreeSet<String> = manifest
            .map(|m| m.live_files().into_iter().map(String::from).collect())
            .unwrap_or_default();
        live.extend(self.removed_files(table).await?.into_keys());
        let orphans: Vec<String> = self
            .list(table)
            .await?
            .into_iter()
            .map(|(path, _)| path)
            .filter(|p| {
                p.ends_with(".parquet")
                    && !p.starts_with(&format!("{DELTA_LOG}/"))
                    && !live.contains(p)
            })
            .collect();
        if !orphans.is_empty() {
            tracing::warn!(
                table,
                files = orphans.len(),
                "Removing files left by an interrupted run."
            );
            self.delete_files(table, orphans.iter().map(String::as_str))
                .await?;
        }
        Ok(())
    }

    /// Streams the record batches of one Parquet object of `size` bytes.
    pub async fn read_parquet(
        &self,
        path: Path,
        size: u64,
        batch_rows: usize,
    ) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
        self.read_parquet_columns(path, size, batch_rows, None)
            .await
    }

    /// Streams the record batches of one Parquet object, only `columns` when
    /// given (top-level column names).
    pub async fn read_parquet_columns(
        &self,
        path: Path,
        size: u64,
        batch_rows: usize,
        columns: Option<&[String]>,
    ) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
        let mask = |schema: &parquet::schema::types::SchemaDescriptor| {
            columns.map(|names| {
                parquet::arrow::ProjectionMask::columns(schema, names.iter().map(String::as_str))
            })
        };
        if size <= WHOLE_GET_BYTES {
            // One GET instead of the footer, metadata and column-chunk ranges: a
            // small file costs one round trip (a merge reads hundreds of them).
            let bytes = self
                .store
                .get(&path)
                .await
                .map_err(|e| Error::lake(format!("reading {path}: {e}")))?
                .bytes()
                .await
                .map_err(|e| Error::lake(format!("reading {path}: {e}")))?;
            let mut builder =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .map_err(|e| Error::lake(format!("opening {path}: {e}")))?
                    .with_batch_size(batch_rows);
            if let Some(mask) = mask(builder.parquet_schema()) {
                builder = builder.with_projection(mask);
            }
            let reader = builder
                .build()
                .map_err(|e| Error::lake(format!("reading {path}: {e}")))?;
            let shown = path.clone();
            return Ok(futures::stream::iter(
                reader.map(move |b| b.map_err(|e| Error::lake(format!("reading {shown}: {e}")))),
            )
            .boxed());
        }
        let reader = LakeFileReader {
            store: Arc::clone(&self.store),
            path: path.clone(),
            size,
        };
        let mut builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| Error::lake(format!("opening {path}: {e}")))?
            .with_batch_size(batch_rows);
        if let Some(mask) = mask(builder.parquet_schema()) {
            builder = builder.with_projection(mask);
        }
        let stream = builder
            .build()
            .map_err(|e| Error::lake(format!("reading {path}: {e}")))?;
        Ok(stream.map(move |b| b.map_err(Error::from)).boxed())
    }
}

/// `relative` (slash-separated) under `base`, each part as it is named.
///
/// object_store would percent-encode some characters of a part (any non-ASCII
/// letter, `` ` ``, `%`…), so that a table named `ördërs` would live under the
/// key `%C3%B6rd%C3%ABrs/`. Delta readers find a table's files from its URL,
/// whose path decodes to the raw names; so the lake names its objects raw too,
/// and only a part that cannot be a key as it is (a control character) is
/// encoded.
pub fn join(base: &Path, relative: &str) -> Path {
    relative
        .split('/')
        .filter(|p| !p.is_empty())
        .fold(
            base.clone(),
            |path, part| match object_store::path::PathPart::parse(part) {
                Ok(raw) => path.join(raw),
                Err(_) => path.join(part),
            },
        )
}

/// Lake files up to this size are read with one whole-object GET.
const WHOLE_GET_BYTES: u64 = 8 << 20;

/// Reads a Parquet object of known size with ranged GETs (the size comes from the
/// manifest, so no suffix request is needed: not every S3 server supports them).
struct LakeFileReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for LakeFileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
