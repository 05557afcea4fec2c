//! The lake: date-partitioned Parquet on an object store (S3 or a local folder),
//! with a manifest per table as the commit point and the pipeline state beside the
//! data, so that any machine can continue the job.
//!
//! Layout under the lake root:
//!
//! ```text
//! <table>/_manifest.json                          live files, schema, watermark
//! <table>/<partition_col>=YYYY-MM-DD/part-*.parquet
//! _sluice/staging/<table>/<run_id>/…              changed rows awaiting a merge
//! _sluice/runs/<run_id>.json                      run reports
//! _sluice/commit-locks/<table>.lock               local folder lakes: the commit's flock
//! ```
//!
//! **Commits cannot clobber.** A table's manifest is replaced only if it is still
//! the version this process read ([`Lake::read_manifest`] remembers the ETag it
//! got; [`Lake::write_manifest`] makes the PUT conditional on it: `If-Match` on
//! S3, `If-None-Match: *` for a table's first commit). A writer that lost the race
//! — another run committed in between, say with the table lock bypassed or
//! expired — gets [`Error::CommitConflict`] and changes nothing. A local folder
//! has no conditional replace in `object_store`; there the compare and the rename
//! run under an exclusive `flock` of a file of the lake's own, so two processes
//! on the host cannot both replace the same version.

pub mod lock;
pub mod manifest;
pub mod schema;
pub mod writer;

use std::collections::HashMap;
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
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::config::LakeConfig;
use crate::error::{Error, Result};
use manifest::Manifest;

/// Name of the manifest object inside a table folder.
pub const MANIFEST_FILE: &str = "_manifest.json";

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
    /// The manifest version this process last read or wrote, per table: what the
    /// next commit of that table must replace.
    versions: Arc<Mutex<HashMap<String, ManifestVersion>>>,
}

/// The version of a table's manifest a commit expects to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ManifestVersion {
    /// The table had no manifest: the commit creates it.
    Absent,
    /// The manifest as read, identified by the store's ETag / version.
    Read(UpdateVersion),
}

impl ManifestVersion {
    fn describe(&self) -> String {
        match self {
            ManifestVersion::Absent => "no manifest yet".into(),
            ManifestVersion::Read(v) => format!(
                "ETag {}",
                v.e_tag.as_deref().or(v.version.as_deref()).unwrap_or("?")
            ),
        }
    }
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
        let mut path = self.root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// The folder of `table`.
    pub fn table_path(&self, table: &str) -> Path {
        self.path(table)
    }

    /// Reads the manifest of `table`, or `None` for a table never committed. The
    /// version read is what this process's next commit of `table` replaces.
    pub async fn read_manifest(&self, table: &str) -> Result<Option<Manifest>> {
        let path = self.table_path(table).join(MANIFEST_FILE);
        match self.store.get(&path).await {
            Ok(result) => {
                let version = UpdateVersion {
                    e_tag: result.meta.e_tag.clone(),
                    version: result.meta.version.clone(),
                };
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| Error::store(format!("reading {path}"), e))?;
                let manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::lake(format!("{path} is not a sluice manifest: {e}")))?;
                self.remember(table, ManifestVersion::Read(version));
                Ok(Some(manifest))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.remember(table, ManifestVersion::Absent);
                Ok(None)
            }
            Err(e) => Err(Error::store(format!("reading {path}"), e)),
        }
    }

    fn remember(&self, table: &str, version: ManifestVersion) {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table.to_string(), version);
    }

    /// Replaces the manifest of its table in one conditional PUT: the lake's
    /// commit point. It succeeds only if the manifest is still the version this
    /// process read (see the module doc); otherwise [`Error::CommitConflict`].
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let table = manifest.table.as_str();
        let path = self.table_path(table).join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| Error::lake(format!("encoding manifest: {e}")))?;
        let expected = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .cloned()
            .ok_or_else(|| {
                Error::lake(format!(
                    "committing {path}: the table's manifest was not read first (a bug in sluice)"
                ))
            })?;
        let written = match &self.location {
            LakeLocation::S3 { .. } => {
                let mode = match &expected {
                    ManifestVersion::Absent => PutMode::Create,
                    ManifestVersion::Read(v) => PutMode::Update(v.clone()),
                };
                self.store
                    .put_opts(&path, PutPayload::from(json), PutOptions::from(mode))
                    .await
                    .map(UpdateVersion::from)
            }
            LakeLocation::Local { root } => {
                self.write_local(root, table, &path, json, &expected)
                    .await?
            }
        };
        match written {
            Ok(mut version) => {
                if version.e_tag.is_none() && version.version.is_none() {
                    // A store that returns no ETag on PUT: take it from a HEAD.
                    let meta = self
                        .store
                        .head(&path)
                        .await
                        .map_err(|e| Error::store(format!("reading {path}"), e))?;
                    version = UpdateVersion {
                        e_tag: meta.e_tag,
                        version: meta.version,
                    };
                }
                self.remember(table, ManifestVersion::Read(version));
                Ok(())
            }
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => {
                let now = match self.store.get(&path).await {
                    Ok(found) => found
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                        .map(|m| format!("it is now version {} of run {}", m.version, m.run_id))
                        .unwrap_or_else(|| "it was replaced".into()),
                    Err(_) => "it was removed".into(),
                };
                Err(Error::CommitConflict {
                    table: table.to_string(),
                    detail: format!(
                        "this run read version {} ({}); {now}",
                        manifest.version.saturating_sub(1),
                        expected.describe()
                    ),
                })
            }
            Err(e) => Err(Error::store(format!("committing {path}"), e)),
        }
    }

    /// The conditional replace of a local folder's manifest: compare the current
    /// ETag with `expected` and rename the new manifest in, both under an
    /// exclusive `flock` that every sluice commit of the lake takes.
    async fn write_local(
        &self,
        root: &FsPath,
        table: &str,
        path: &Path,
        json: Vec<u8>,
        expected: &ManifestVersion,
    ) -> Result<std::result::Result<UpdateVersion, object_store::Error>> {
        let locks = root.join("_sluice").join("commit-locks");
        let lock_path = locks.join(format!("{}.lock", table.replace('/', "%2F")));
        let flock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            std::fs::create_dir_all(&locks)?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(|e| Error::lake(format!("committing {path}: {e}")))?
        .map_err(|e| Error::lake(format!("committing {path}: taking the commit lock: {e}")))?;
        let current = match self.store.head(path).await {
            Ok(meta) => ManifestVersion::Read(UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            }),
            Err(object_store::Error::NotFound { .. }) => ManifestVersion::Absent,
            Err(e) => return Err(Error::store(format!("reading {path}"), e)),
        };
        let outcome = if &current != expected {
            Err(object_store::Error::Precondition {
                path: path.to_string(),
                source: format!(
                    "expected {}, found {}",
                    expected.describe(),
                    current.describe()
                )
                .into(),
            })
        } else {
            match self.store.put(path, PutPayload::from(json)).await {
                Ok(_) => match self.store.head(path).await {
                    Ok(meta) => Ok(UpdateVersion {
                        e_tag: meta.e_tag,
                        version: meta.version,
                    }),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        };
        drop(flock); // closing the file releases the lock
        Ok(outcome)
    }

    /// Deletes the manifest of `table` (a reset): the next commit creates it.
    pub async fn delete_manifest(&self, table: &str) -> Result<()> {
        let path = self.table_path(table).join(MANIFEST_FILE);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.remember(table, ManifestVersion::Absent);
                Ok(())
            }
            Err(e) => Err(Error::store(format!("deleting {path}"), e)),
        }
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
            let path = rel.split('/').fold(base.clone(), |p, part| p.join(part));
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(Error::lake(format!("deleting {path}: {e}"))),
            }
        }
        Ok(deleted)
    }

    /// Deletes the Parquet files under the table folder that `manifest` does not
    /// list (all of them without a manifest): what an interrupted run wrote but
    /// never committed.
    pub async fn remove_orphans(
        &self,
        table: &str,
        manifest: Option<&manifest::Manifest>,
    ) -> Result<()> {
        let live = manifest.map(|m| m.live_files()).unwrap_or_default();
        let orphans: Vec<String> = self
            .list(table)
            .await?
            .into_iter()
            .map(|(path, _)| path)
            .filter(|p| p.ends_with(".parquet") && !live.contains(p.as_str()))
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
