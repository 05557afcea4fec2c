//! PostgreSQL, MySQL/MariaDB and SQLite through connectorx.
//!
//! connectorx is synchronous: it runs on a blocking thread that feeds a bounded
//! channel, so memory stays at a few batches whatever the table size. A failed
//! read (connectorx reports it by panicking its writer thread) arrives as an error
//! at the end of the stream, never as a silent end of data.
//!
//! Before the first read of a source, sluice opens one connection itself, the way
//! connectorx would (same URL parameters, same TLS), and fails at once with the
//! server's own words if it cannot: connectorx's connection pool retries a refused
//! login for its whole timeout and then reports only `db error`.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use connectorx::prelude::*;
use connectorx::sql::CXQuery;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::arrow_bridge::into_arrow;
use super::BatchStream;
use crate::config::SourceKind;
use crate::error::{chain, register_url_secret, Error, Result};

/// Batches in flight between the reader thread and the pipeline.
const CHANNEL_BATCHES: usize = 2;

/// How long the connection check waits for the server, unless the URL sets its
/// own connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Statements run on each MySQL connection before the extract.
const MYSQL_SESSION: &[&str] = &["SET time_zone = '+00:00'"];

/// Runs `query` against the source at `url` and streams the result.
///
/// Returns once the source has answered with a schema, so a bad query, a missing
/// table or a wrong password is an error here, before any data moves.
pub async fn read(table: &str, url: &str, query: String, batch_rows: usize) -> Result<BatchStream> {
    check_connection(table, url).await?;
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

/// Source URLs this process has connected to: each is checked once, not before
/// every read.
static CONNECTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Opens and closes one connection to the source at `url`, so that a wrong
/// password, an unknown database or a server that is not there is an error at
/// once, in the server's own words, naming the address but never the password.
pub async fn check_connection(table: &str, url: &str) -> Result<()> {
    register_url_secret(url);
    let connected = || CONNECTED.lock().unwrap_or_else(|e| e.into_inner());
    if connected().contains(url) {
        return Ok(());
    }
    let conn = SourceConn::try_from(url).map_err(|e| Error::source(table, chain(&e)))?;
    let at = address(&conn.conn);
    let outcome = match conn.ty {
        connectorx::source_router::SourceType::Postgres => check_postgres(&conn.conn, &at).await,
        connectorx::source_router::SourceType::MySQL => {
            let url = conn.conn.clone();
            let at = at.clone();
            tokio::task::spawn_blocking(move || check_mysql(&url, &at))
                .await
                .unwrap_or_else(|e| Err(format!("the connection check failed: {e}")))
        }
        // SQLite opens a file; connectorx's own error says which.
        _ => Ok(()),
    };
    outcome.map_err(|reason| Error::source(table, reason))?;
    connected().insert(url.to_string());
    Ok(())
}

/// ` at host:port` of a URL, or nothing for a socket path.
fn address(url: &url::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) if !host.is_empty() => format!(" at {host}:{port}"),
        (Some(host), None) if !host.is_empty() => format!(" at {host}"),
        _ => String::new(),
    }
}

async fn check_postgres(url: &url::Url, at: &str) -> Result<(), String> {
    // connectorx's TLS connector for this URL (sslmode, sslrootcert, client keys)…
    let (_, tls) = connectorx::sources::postgres::rewrite_tls_args(url)
        .map_err(|e| format!("PostgreSQL URL: {}", chain(&e)))?;
    // …and its parameters, less the TLS file ones that tokio-postgres rejects.
    let kept: Vec<&str> = url
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            !pair.is_empty() && !matches!(key, "sslkey" | "sslcert" | "sslrootcert")
        })
        .collect();
    let mut stripped = url.clone();
    stripped.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
    let mut config: tokio_postgres::Config = stripped
        .as_str()
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("PostgreSQL URL: {}", chain(&e)))?;
    let wait = *config.get_connect_timeout().unwrap_or(&CONNECT_TIMEOUT);
    config.connect_timeout(wait);
    let connect = async {
        match tls {
            Some(tls) => connect_postgres(&config, tls).await,
            None => connect_postgres(&config, tokio_postgres::NoTls).await,
        }
    };
    match tokio::time::timeout(wait, connect).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(match e.as_db_error() {
            Some(db) => {
                let mut text = format!(
                    "PostgreSQL{at} refused the connection: {} (SQLSTATE {})",
                    db.message(),
                    db.code().code()
                );
                if let Some(hint) = db.hint() {
                    text.push_str(&format!("; hint: {hint}"));
                }
                text
            }
            None => format!("cannot connect to PostgreSQL{at}: {}", chain(&e)),
        }),
        Err(_) => Err(format!(
            "cannot connect to PostgreSQL{at}: no answer within {} s",
            wait.as_secs()
        )),
    }
}

/// Logs in and ends the session.
async fn connect_postgres<T>(
    config: &tokio_postgres::Config,
    tls: T,
) -> Result<(), tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
{
    let (client, connection) = config.connect(tls).await?;
    // Dropping the client asks the server to end the session; let it.
    drop(client);
    let _ = connection.await;
    Ok(())
}

fn check_mysql(url: &url::Url, at: &str) -> Result<(), String> {
    // connectorx's own options for this URL (ssl-mode, ssl-ca), with time limits.
    let options: mysql::Opts = connectorx::sources::mysql::build_opts(url.as_str())
        .map_err(|e| format!("MySQL URL: {}", chain(&e)))?
        .into();
    let wait = options.get_tcp_connect_timeout().unwrap_or(CONNECT_TIMEOUT);
    let options = mysql::OptsBuilder::from_opts(options)
        .tcp_connect_timeout(Some(wait))
        .read_timeout(Some(wait))
        .write_timeout(Some(wait));
    let no_answer = || {
        format!(
            "cannot connect to MySQL{at}: no answer within {} s",
            wait.as_secs()
        )
    };
    // A read or write past its time limit fails with EAGAIN (or ETIMEDOUT).
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    match mysql::Conn::new(options) {
        Ok(conn) => {
            drop(conn);
            Ok(())
        }
        Err(mysql::Error::MySqlError(e)) => Err(format!(
            "MySQL{at} refused the connection: {} (error {}, SQLSTATE {})",
            e.message, e.code, e.state
        )),
        Err(mysql::Error::IoError(e)) if timed_out(&e) => Err(no_answer()),
        Err(mysql::Error::IoError(e)) => Err(format!("cannot connect to MySQL{at}: {e}")),
        Err(mysql::Error::CodecError(e)) => {
            match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
                Some(io) if timed_out(io) => Err(no_answer()),
                Some(io) => Err(format!("cannot connect to MySQL{at}: {io}")),
                None => Err(format!("cannot connect to MySQL{at}: {e}")),
            }
        }
        Err(mysql::Error::DriverError(mysql::DriverError::ConnectTimeout)) => Err(no_answer()),
        Err(mysql::Error::DriverError(e)) => Err(format!("cannot connect to MySQL{at}: {e}")),
        Err(e) => Err(format!("cannot connect to MySQL{at}: {e}")),
    }
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
