//! MongoDB collections as Arrow batches.
//!
//! Documents come off the driver as raw BSON (`Collection<RawDocumentBuf>`, no
//! `Document` or JSON in between) and are decoded straight into Arrow builders
//! following a [`ColumnType`] schema, declared in the config or inferred from a
//! sample. A value that does not fit its column is never dropped: it goes, as
//! relaxed Extended JSON under its field path, to the `_overflow` column, or fails
//! the run naming the collection, `_id` and field
//! ([`MismatchPolicy`](crate::config::MismatchPolicy)).
//!
//! Each batch also carries `_key` (the key field encoded so that byte order is
//! MongoDB's sort order, for the snapshot diff's merge join) and `_hash` (XXH3 of
//! the document's BSON bytes: its content hash).
//!
//! This file reads collections through the driver ([`CollectionSource`]); the
//! parts are [`schema`] (inference), [`decode`] (documents into batches, over
//! `builder`: values into column builders, and `scan`: raw BSON elements) and
//! [`key`] (the `_key` encoding).

use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use mongodb::bson::raw::{RawDocument, RawDocumentBuf};
use mongodb::bson::{doc, Bson, Document};
use tokio::sync::mpsc;
use tracing::info;

use super::BatchStream;
use crate::error::{Error, Result};

mod builder;
pub mod decode;
pub mod key;
mod scan;
pub mod schema;

pub use crate::config::mongo_types::{Column, ColumnType};
pub use builder::{decimal_parts, to_json};
pub use decode::{describe_id, Decoder};
pub use key::sort_key;
pub use schema::DocumentSchema;

/// The JSON column that keeps values that did not fit the schema.
pub const OVERFLOW_COLUMN: &str = "_overflow";
/// Order-preserving encoding of the key field (see [`sort_key`]).
pub const KEY_COLUMN: &str = "_key";
/// XXH3-64 of the document's BSON bytes.
pub const HASH_COLUMN: &str = "_hash";

/// A batch is emitted when its documents reach this many BSON bytes, whatever
/// `batch_rows` says, so that large documents keep memory bounded.
pub const BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Batches in flight between the reader task and the pipeline.
const CHANNEL_BATCHES: usize = 2;

/// Where to read: a collection of the database named in the source URL.
#[derive(Debug, Clone)]
pub struct CollectionSource {
    pub url: String,
    pub collection: String,
}

impl CollectionSource {
    async fn collection(&self, table: &str) -> Result<mongodb::Collection<RawDocumentBuf>> {
        let client = mongodb::Client::with_uri_str(&self.url)
            .await
            .map_err(|e| Error::source(table, crate::error::chain(&e)))?;
        let db = client.default_database().ok_or_else(|| {
            Error::source(
                table,
                "the MongoDB source URL names no database (mongodb://host:27017/DATABASE)",
            )
        })?;
        Ok(db.collection::<RawDocumentBuf>(&self.collection))
    }

    /// Reads up to `n` documents in natural order, for schema inference.
    pub async fn sample(&self, table: &str, n: usize) -> Result<Vec<RawDocumentBuf>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let coll = self.collection(table).await?;
        let mut cursor = coll
            .find(doc! {})
            .limit(n as i64)
            .await
            .map_err(|e| Error::source(table, crate::error::chain(&e)))?;
        let mut out = Vec::new();
        while cursor
            .advance()
            .await
            .map_err(|e| Error::source(table, crate::error::chain(&e)))?
        {
            out.push(cursor.current().to_raw_document_buf());
        }
        Ok(out)
    }

    /// Streams the whole collection, sorted by the schema's key field, as batches
    /// of at most `batch_rows` documents or [`BATCH_BYTES`] bytes.
    ///
    /// The driver runs in a task feeding a bounded channel; the stream ends with an
    /// error if the task fails or panics, never with a silent end of data.
    pub async fn read(
        &self,
        table: &str,
        schema: DocumentSchema,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let coll = self.collection(table).await?;
        self.read_filters(table, &coll, schema, batch_rows, vec![doc! {}])
            .await
    }

    /// Streams the whole collection as [`CollectionSource::read`] does, with up
    /// to `parallelism` cursors each reading one range of the key field at once
    /// (snapshot mode: batches of different ranges interleave, so the stream as a
    /// whole is not in key order; each range is, and keys are still checked
    /// unique). Falls back to one cursor for a collection of at most `batch_rows`
    /// documents or whose keys are not all of one orderable type.
    ///
    /// Memory: each cursor holds at most one batch being decoded plus the
    /// driver's current server batch; the cursors share one bounded channel of
    /// finished batches.
    pub async fn read_parallel(
        &self,
        table: &str,
        schema: DocumentSchema,
        batch_rows: usize,
        parallelism: usize,
    ) -> Result<BatchStream> {
        let coll = self.collection(table).await?;
        let filters = if parallelism > 1 {
            key_ranges(table, &coll, &schema.key, parallelism, batch_rows).await?
        } else {
            vec![doc! {}]
        };
        self.read_filters(table, &coll, schema, batch_rows, filters)
            .await
    }

    /// One cursor per filter, sorted by key, each decoded in its own task into
    /// one bounded channel.
    async fn read_filters(
        &self,
        table: &str,
        coll: &mongodb::Collection<RawDocumentBuf>,
        schema: DocumentSchema,
        batch_rows: usize,
        filters: Vec<Document>,
    ) -> Result<BatchStream> {
        let arrow_schema = schema.arrow_schema();
        let (tx, mut rx) = mpsc::channel::<Result<Option<RecordBatch>>>(CHANNEL_BATCHES);
        let readers = filters.len();
        for filter in filters {
            let key = schema.key.clone();
            let cursor = coll
                .find(filter)
                .sort(doc! { key.as_str(): 1 })
                .allow_disk_use(true)
                .batch_size(batch_rows.min(10_000) as u32)
                .await
                .map_err(|e| Error::source(table, crate::error::chain(&e)))?;
            let decoder = Decoder::new(schema.clone(), &self.collection);
            let producer = read_cursor(table.to_string(), cursor, decoder, batch_rows, tx.clone());
            let error_tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = producer.await {
                    let _ = error_tx.send(Err(e)).await;
                }
            });
        }
        drop(tx);
        let table_name = table.to_string();
        let mut ended = 0usize;
        let mut done = false;
        let batches = futures::stream::poll_fn(move |cx| {
            use std::task::Poll;
            loop {
                if done {
                    return Poll::Ready(None);
                }
                return match rx.poll_recv(cx) {
                    Poll::Ready(Some(Ok(Some(batch)))) => Poll::Ready(Some(Ok(batch))),
                    Poll::Ready(Some(Ok(None))) => {
                        ended += 1;
                        if ended == readers {
                            done = true;
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        done = true;
                        Poll::Ready(Some(Err(e)))
                    }
                    // Every task ended, one without its end marker: it panicked.
                    Poll::Ready(None) => {
                        done = true;
                        Poll::Ready(Some(Err(Error::source(
                            &table_name,
                            "the MongoDB reader stopped before the end of the collection",
                        ))))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
        });
        Ok(BatchStream {
            schema: arrow_schema,
            batches: Box::pin(batches),
        })
    }
}

/// Decodes one cursor into batches sent on `tx`, then its end marker
/// (`Ok(None)`). An `Err` is for the caller to send.
async fn read_cursor(
    name: String,
    mut cursor: mongodb::Cursor<RawDocumentBuf>,
    mut decoder: Decoder,
    batch_rows: usize,
    tx: mpsc::Sender<Result<Option<RecordBatch>>>,
) -> Result<()> {
    let mut last_key: Option<Vec<u8>> = None;
    loop {
        let more = cursor
            .advance()
            .await
            .map_err(|e| Error::source(&name, crate::error::chain(&e)))?;
        if more {
            let doc = cursor.current();
            decoder.append(doc).map_err(|e| Error::source(&name, e))?;
            // The diff merge-joins on `_key`: check the server's order is ours,
            // and that the key is unique.
            let key_now = decoder.last_key();
            if let Some(prev) = &last_key {
                if prev.as_slice() >= key_now {
                    return Err(Error::source(
                        &name,
                        format!(
                            "document _id {}: key field {:?} {} (sluice needs one document per key, in MongoDB's sort order)",
                            describe_id(doc),
                            decoder.schema.key,
                            if prev.as_slice() == key_now { "is not unique" } else { "arrived out of order" }
                        ),
                    ));
                }
            }
            match &mut last_key {
                Some(prev) => {
                    prev.clear();
                    prev.extend_from_slice(key_now);
                }
                None => last_key = Some(key_now.to_vec()),
            }
        }
        if decoder.rows() > 0
            && (!more || decoder.rows() >= batch_rows || decoder.bytes() >= BATCH_BYTES)
        {
            let batch = decoder.flush().map_err(|e| Error::source(&name, e))?;
            if tx.send(Ok(Some(batch))).await.is_err() {
                return Ok(()); // the pipeline stopped reading
            }
        }
        if !more {
            let _ = tx.send(Ok(None)).await;
            return Ok(());
        }
    }
}

/// Documents sampled per range to place the range boundaries.
const SAMPLE_PER_RANGE: usize = 64;

/// Filters that split the collection into up to `n` disjoint ranges of `key`
/// whose union is the whole collection, or one empty filter when it cannot be
/// split safely.
///
/// MongoDB's `$lt`/`$gte` only match values of the bound's type bracket, so the
/// ranges cover the collection only if every key is of one bracket: that holds
/// when the lowest and the highest key (two index lookups on `_id`) are. Then
/// boundaries are quantiles of a `$sample` of the keys: ranges are about equal,
/// not exactly. Both work on MongoDB and SecantusDB (which has no
/// `splitVector`).
async fn key_ranges(
    table: &str,
    coll: &mongodb::Collection<RawDocumentBuf>,
    key: &str,
    n: usize,
    batch_rows: usize,
) -> Result<Vec<Document>> {
    let fail = |e: mongodb::error::Error| Error::source(table, crate::error::chain(&e));
    let whole = vec![doc! {}];
    let count = coll.estimated_document_count().await.map_err(fail)?;
    if count <= batch_rows as u64 {
        return Ok(whole);
    }
    let end = |direction: i32| {
        coll.find_one(doc! {})
            .sort(doc! { key: direction })
            .projection(doc! { key: 1 })
    };
    let (Some(low), Some(high)) = (end(1).await.map_err(fail)?, end(-1).await.map_err(fail)?)
    else {
        return Ok(whole);
    };
    let bracket = |d: &RawDocument| {
        d.get(key)
            .ok()
            .flatten()
            .and_then(sort_key)
            .map(|k| (k[0], k))
    };
    let (Some((low_bracket, low_key)), Some((high_bracket, _))) = (bracket(&low), bracket(&high))
    else {
        return Ok(whole);
    };
    if low_bracket != high_bracket {
        info!(
            table,
            key, "Keys of more than one type: reading with one cursor."
        );
        return Ok(whole);
    }
    let mut sample = coll
        .aggregate(vec![
            doc! { "$sample": { "size": (SAMPLE_PER_RANGE * n) as i64 } },
            doc! { "$project": { key: 1 } },
        ])
        .with_type::<RawDocumentBuf>()
        .await
        .map_err(fail)?;
    let mut keys: Vec<(Vec<u8>, Bson)> = Vec::new();
    while let Some(d) = sample.try_next().await.map_err(fail)? {
        let Ok(Some(value)) = d.get(key) else {
            continue;
        };
        let Some(sort) = sort_key(value) else {
            continue;
        };
        if sort[0] != low_bracket || sort <= low_key {
            continue;
        }
        if let Ok(value) = Bson::try_from(value) {
            keys.push((sort, value));
        }
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys.dedup_by(|a, b| a.0 == b.0);
    let mut bounds: Vec<Bson> = Vec::new();
    let mut last: Option<&[u8]> = None;
    for i in 1..n {
        let Some((sort, value)) = keys.get(i * keys.len() / n) else {
            continue;
        };
        if last.is_some_and(|l| l >= sort.as_slice()) {
            continue;
        }
        last = Some(sort);
        bounds.push(value.clone());
    }
    if bounds.is_empty() {
        return Ok(whole);
    }
    let mut filters = Vec::with_capacity(bounds.len() + 1);
    filters.push(doc! { key: { "$lt": bounds[0].clone() } });
    for pair in bounds.windows(2) {
        filters.push(doc! { key: { "$gte": pair[0].clone(), "$lt": pair[1].clone() } });
    }
    filters.push(doc! { key: { "$gte": bounds[bounds.len() - 1].clone() } });
    info!(
        table,
        ranges = filters.len(),
        sampled = keys.len(),
        "Reading key ranges in parallel."
    );
    Ok(filters)
}
