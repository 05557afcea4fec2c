//! The commit horizon of a SQL source: the earliest cursor value a row not yet
//! committed could still carry, read at the start of a watermark run.
//!
//! A trigger setting `updated_at = now()` stamps a row with its transaction's
//! *start*; the row becomes visible only at commit. A watermark moved past a
//! transaction that is still open skips its rows for good. So the watermark
//! never moves past the start of the oldest transaction open when the run
//! begins (nor past the run's own start, which bounds every transaction that
//! begins later); the rows above it are read again next run and dropped when
//! unchanged (`capture::cursor`).
//!
//! - PostgreSQL: `min(xact_start)` of the client backends of this database in a
//!   transaction (`pg_stat_activity`). Every open transaction counts, not only
//!   those holding an xid or a snapshot: a read-committed transaction idle
//!   after `BEGIN` holds neither, yet its `now()` is already fixed. Other users'
//!   backends are visible with `pg_read_all_stats` (or `pg_monitor`, or a
//!   superuser); without it only the connecting user's are, and the run warns.
//! - MySQL / MariaDB: `min(trx_started)` of `information_schema.innodb_trx`
//!   (needs the `PROCESS` privilege; without it the run warns and the watermark
//!   moves as before). `NOW()` there is the statement's start, never earlier
//!   than its transaction's.
//!
//! Integer cursors have no such bound: a sequence value taken by an open
//! transaction cannot be read from the server's activity. `lookback` covers
//! them.

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use futures::TryStreamExt;

use crate::config::SourceKind;
use crate::error::{Error, Result};

/// The oldest instant an uncommitted row could carry, as of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitHorizon {
    /// Microseconds since the epoch, UTC (for `timestamptz` cursors).
    pub utc_micros: i64,
    /// The same instant on the server's wall clock (`TimeZone` in PostgreSQL,
    /// UTC in sluice's MySQL sessions), for naive `timestamp` cursors.
    pub local_micros: i64,
    /// The oldest open transaction, when one holds the horizon before the check's
    /// own start: its server process (or thread) id and start (UTC micros).
    pub oldest: Option<(i64, i64)>,
    /// Why the check may not see every open transaction, for the run's warnings.
    pub blind: Option<String>,
}

/// Reads the commit horizon of the source at `url`. `Ok(None)` for a source
/// with no concurrent writers to wait for (SQLite); `Err` carries the reason the
/// horizon cannot be read (a missing privilege), for a warning.
pub async fn commit_horizon(
    table: &str,
    kind: SourceKind,
    url: &str,
) -> Result<Option<CommitHorizon>, String> {
    let query = match kind {
        SourceKind::Postgres => POSTGRES,
        SourceKind::Mysql => MYSQL,
        SourceKind::Sqlite | SourceKind::Mongodb => return Ok(None),
    };
    let row = query_row(table, url, query)
        .await
        .map_err(|e| e.to_string())?;
    let [now, offset, oldest, pid, sees_all] = row[..] else {
        return Err("the open-transaction query returned an unexpected row".into());
    };
    let now = now.ok_or("the server returned no current time")?;
    let oldest_start = oldest.filter(|&o| o < now);
    let utc_micros = oldest_start.unwrap_or(now);
    let blind = (sees_all == Some(0)).then(|| {
        let how = match kind {
            SourceKind::Postgres => "grant the user pg_read_all_stats (or pg_monitor)",
            _ => "grant the user PROCESS",
        };
        format!("only this user's open transactions are visible to the watermark guard; {how} so that other users' transactions hold the watermark too")
    });
    Ok(Some(CommitHorizon {
        utc_micros,
        local_micros: utc_micros + offset.unwrap_or(0),
        oldest: oldest_start.map(|start| (pid.unwrap_or(0), start)),
        blind,
    }))
}

/// Columns: now (UTC micros), the session's UTC offset (micros), the oldest
/// open transaction's start (UTC micros) and process id, whether every
/// backend is visible (1/0).
const POSTGRES: &str = "\
SELECT (extract(epoch FROM now()) * 1000000)::bigint, \
       (extract(timezone FROM now()) * 1000000)::bigint, \
       (extract(epoch FROM o.xact_start) * 1000000)::bigint, \
       o.pid::bigint, \
       (pg_has_role('pg_read_all_stats', 'USAGE') \
        OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))::int::bigint \
FROM (SELECT 1) AS one LEFT JOIN ( \
    SELECT pid, xact_start FROM pg_stat_activity \
    WHERE pid <> pg_backend_pid() AND datname = current_database() \
      AND backend_type = 'client backend' AND xact_start IS NOT NULL \
    ORDER BY xact_start LIMIT 1) AS o ON true";

/// The same for MySQL / MariaDB, in sluice's UTC session (`innodb_trx` needs
/// `PROCESS`: without it the query fails, and the caller warns).
/// `trx_started` is on the server's system clock, whatever the session's zone.
const MYSQL: &str = "\
SELECT CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', NOW(6)) AS SIGNED), \
       CAST(0 AS SIGNED), \
       CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', \
            CONVERT_TZ(o.trx_started, 'SYSTEM', '+00:00')) AS SIGNED), \
       CAST(o.trx_mysql_thread_id AS SIGNED), \
       CAST(1 AS SIGNED) \
FROM (SELECT 1 AS one) AS one LEFT JOIN ( \
    SELECT trx_started, trx_mysql_thread_id FROM information_schema.innodb_trx \
    WHERE trx_mysql_thread_id <> CONNECTION_ID() \
    ORDER BY trx_started LIMIT 1) AS o ON 1 = 1";

/// The first row of `query` as nullable integers.
async fn query_row(table: &str, url: &str, query: &str) -> Result<Vec<Option<i64>>> {
    let stream = super::sql::read(table, url, query.to_string(), 16).await?;
    let batches: Vec<_> = stream.batches.try_collect().await?;
    let batch = batches
        .into_iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| Error::source(table, "the open-transaction query returned no row"))?;
    batch
        .columns()
        .iter()
        .map(|column| {
            let ints = cast(column, &DataType::Int64).map_err(|e| Error::source(table, e))?;
            let ints = ints.as_primitive::<Int64Type>();
            Ok(ints.is_valid(0).then(|| ints.value(0)))
        })
        .collect()
}
