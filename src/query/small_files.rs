//! A Parquet reader factory for DataFusion scans of the lake: a file of at most
//! [`WHOLE_GET_BYTES`] is fetched with one GET and every read of it (footer, page
//! index, column chunks) is served from those bytes; larger files go through
//! DataFusion's own reader, with its metadata cache.
//!
//! Day partitions make many small files (a 150K-row table over 300 days is 300
//! files of ~15 KB), and DataFusion's reader asks for each in several ranged GETs
//! one after the other; on S3 that round-trip time, not the decoding, was most of
//! a model's run.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::future::BoxFuture;
use futures::FutureExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use crate::lake::WHOLE_GET_BYTES;

/// See the module documentation.
#[derive(Debug)]
pub struct LakeReaderFactory {
    store: Arc<dyn ObjectStore>,
    large: CachedParquetFileReaderFactory,
}

impl LakeReaderFactory {
    pub fn new(store: Arc<dyn ObjectStore>, metadata_cache: Arc<FileMetadataCache>) -> Self {
        Self {
            large: CachedParquetFileReaderFactory::new(Arc::clone(&store), metadata_cache),
            store,
        }
    }
}

impl ParquetFileReaderFactory for LakeReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::error::Result<Box<dyn AsyncFileReader + Send>> {
        if file.object_meta.size > WHOLE_GET_BYTES {
            return self
                .large
                .create_reader(partition_index, file, metadata_size_hint, metrics);
        }
        Ok(Box::new(WholeFile {
            store: Arc::clone(&self.store),
            location: file.object_meta.location,
            bytes: None,
        }))
    }
}

/// One small file, fetched on the first read and kept for the scan of it.
struct WholeFile {
    store: Arc<dyn ObjectStore>,
    location: Path,
    bytes: Option<Bytes>,
}

impl WholeFile {
    async fn bytes(&mut self) -> parquet::errors::Result<Bytes> {
        if let Some(bytes) = &self.bytes {
            return Ok(bytes.clone());
        }
        let external = |e: object_store::Error| ParquetError::External(Box::new(e));
        let bytes = self
            .store
            .get(&self.location)
            .await
            .map_err(external)?
            .bytes()
            .await
            .map_err(external)?;
        self.bytes = Some(bytes.clone());
        Ok(bytes)
    }

    fn slice(bytes: &Bytes, range: Range<u64>) -> parquet::errors::Result<Bytes> {
        if range.end > bytes.len() as u64 || range.start > range.end {
            return Err(ParquetError::EOF(format!(
                "range {range:?} is outside the {} bytes of the file",
                bytes.len()
            )));
        }
        Ok(bytes.slice(range.start as usize..range.end as usize))
    }
}

impl AsyncFileReader for WholeFile {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move { Self::slice(&self.bytes().await?, range) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let bytes = self.bytes().await?;
            ranges.into_iter().map(|r| Self::slice(&bytes, r)).collect()
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let bytes = self.bytes().await?;
            // The page index is in the bytes already: reading it costs no I/O.
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .parse_and_finish(&bytes)?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
