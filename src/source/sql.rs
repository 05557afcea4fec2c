//! PostgreSQL, MySQL/MariaDB and SQLite through connectorx.
//!
//! connectorx is synchronous: it runs on a blocking thread that feeds a bounded
//! channel, so memory stays at a few batches whatever the table size. A failed
//! read (connectorx reports it by panicking its writer thread) arrives as an error
//! at the end of the stream, never as a silent end of data.

use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow::record_batch::RecordBatch;
use connectorx::prelude::*;
use connectorx::sql::CXQuery;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::arrow_bridge::into_arrow;
use super::BatchStream;
use crate::config::SourceKind;
use crate::error::{chain, Error, Result};

/// Batches in flight between the reader thread and the pipeline.
const CHANNEL_BATCHES: usize = 2;

/// Statements run on each MySQL connection before the extract.
const MYSQL_SESSION: &[&str] = &["SET time_zone = '+00:00'"];

/// Runs `query` against the source at `url` and streams the result.
///
/// Returns once the source has answered with a schema, so a bad query, a missing
/// table or a wrong password is an error here, before any data moves.
pub async fn read(table: &str, url: &str, query: String, batch_rows: usize) -> Result<BatchStream> {
    let (tx, mut rx) = mpsc::channel::<Result<RecordBatch>>(CHANNEL_BATCHES);
    let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
    let table_name = table.to_string();
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            produce(&table_name, &url, &query, batch_rows, schema_tx, &tx)
        }));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(panic) => Some(Error::source(&table_name, panic_message(&panic))),
        };
        if let Some(e) = failure {
            // The receiver may be gone already (the pipeline failed elsewhere).
            let _ = tx.blocking_send(Err(e));
        }
    });
    let schema = match schema_rx.await {
        Ok(schema) => schema,
        // The reader failed before it had a schema: its error is in the channel.
        Err(_) => {
            return Err(match rx.recv().await {
                Some(Err(e)) => e,
                _ => Error::source(table, "the reader stopped before returning a schema"),
            })
        }
    };
    let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
    Ok(BatchStream { schema, batches })
}

fn produce(
    table: &str,
    url: &str,
    query: &str,
    batch_rows: usize,
    schema_tx: tokio::sync::oneshot::Sender<arrow::datatypes::SchemaRef>,
    tx: &mpsc::Sender<Result<RecordBatch>>,
) -> Result<()> {
    let conn = SourceConn::try_from(url).map_err(|e| Error::source(table, chain(&e)))?;
    let queries = [CXQuery::naked(query)];
    // MySQL sends TIMESTAMP values in the session's time zone: make it UTC, so that
    // they are instants (labelled in source::types) and cursor literals compare in UTC.
    let session: Vec<String> = match conn.ty {
        connectorx::source_router::SourceType::MySQL => {
            MYSQL_SESSION.iter().map(|s| s.to_string()).collect()
        }
        _ => Vec::new(),
    };
    let pre = (!session.is_empty()).then_some(session.as_slice());
    let mut iter =
        connectorx::get_arrow::new_record_batch_iter(&conn, None, &queries, batch_rows, pre)
            .map_err(|e| Error::source(table, chain(&e)))?;
    let (empty, _) = iter.get_schema();
    let schema = into_arrow(empty)
        .map_err(|e| Error::source(table, e))?
        .schema();
    if schema_tx.send(schema).is_err() {
        return Ok(());
    }
    iter.prepare();
    while let Some(batch) = iter.next_batch() {
        let batch = into_arrow(batch).map_err(|e| Error::source(table, e))?;
        if batch.num_rows() == 0 {
            continue;
        }
        if tx.blocking_send(Ok(batch)).is_err() {
            break; // the pipeline stopped reading
        }
    }
    Ok(())
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("reader failed");
    // connectorx wraps writer errors as "cx writer failed: <Debug of the error>".
    text.trim_start_matches("cx writer failed: ").to_string()
}

/// The SQL dialect of a source, for identifiers and literals sluice generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
}

impl From<SourceKind> for Dialect {
    fn from(kind: SourceKind) -> Self {
        match kind {
            SourceKind::Postgres => Dialect::Postgres,
            SourceKind::Mysql => Dialect::Mysql,
            SourceKind::Sqlite => Dialect::Sqlite,
            SourceKind::Mongodb => {
                unreachable!("validated: MongoDB tables use snapshot capture, never SQL")
            }
        }
    }
}

impl Dialect {
    /// Quotes one identifier.
    pub fn ident(self, name: &str) -> String {
        match self {
            Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
            Dialect::Postgres | Dialect::Sqlite => format!("\"{}\"", name.replace('"', "\"\"")),
        }
    }

    /// Quotes a possibly schema-qualified table name (`schema.table`).
    pub fn table(self, name: &str) -> String {
        name.split('.')
            .map(|part| self.ident(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// A string literal.
    pub fn string(self, value: &str) -> String {
        match self {
            Dialect::Mysql => format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''")),
            Dialect::Postgres | Dialect::Sqlite => format!("'{}'", value.replace('\'', "''")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_hostile_identifiers() {
        assert_eq!(Dialect::Postgres.ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(Dialect::Mysql.ident("a`b"), "`a``b`");
        assert_eq!(Dialect::Postgres.table("public.t x"), "\"public\".\"t x\"");
        assert_eq!(Dialect::Mysql.string("it's \\"), "'it''s \\\\'");
    }
}
