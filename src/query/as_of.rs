//! Point-in-time reads: `sluice query --as-of DAY|VERSION|TIME` (and `sluice shell`).
//!
//! As of a **day** (`YYYY-MM-DD`), tables that keep their history in their rows
//! are read from their rows:
//!
//! - a **snapshot** table (partitioned by `snapshot_date`) is its last snapshot
//!   taken on or before the day; with no snapshot by then it is empty;
//! - a **change** table (partitioned by `_change_date`, from `snapshot_diff`) is
//!   its state on that day: for each key, the latest change on or before the day
//!   (highest `_version`), without the keys whose latest change is a delete. The
//!   change rows up to that day stay available as `<table>_changes`.
//!
//! Every other table (watermark capture, models) is read as it is now: a day
//! is a day of the data, not of the commits. As of a **version** (`42`) or an
//! **instant** (`2026-11-21T08:00:00Z`) every table is read as that Delta
//! version of its own log, or the last one committed by then (time travel). A table with no
//! version then cannot be queried (the error says why); reading an old version
//! needs its files, which stay for `[lake] keep_versions_days`.

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;

use super::{query_error, LakeTable};
use crate::capture::snapshot::{CHANGE_DATE, IS_DELETED, SNAPSHOT_DATE, VERSION};
use crate::error::{Error, Result};
use crate::lake::manifest::Manifest;
use crate::lake::At;

/// What `--as-of` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// `YYYY-MM-DD`: history tables by their rows, the others by Delta version.
    Day(NaiveDate),
    /// A Delta version of every table.
    Version(u64),
    /// An instant (RFC 3339): the version of every table committed by then.
    Time(chrono::DateTime<chrono::Utc>),
}

impl std::str::FromStr for AsOf {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Ok(version) = s.parse::<u64>() {
            return Ok(AsOf::Version(version));
        }
        if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(AsOf::Day(day));
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| AsOf::Time(t.with_timezone(&chrono::Utc)))
            .map_err(|_| {
                format!(
                    "{s:?} is not a day (2026-11-21), a Delta version (42) or an instant (2026-11-21T08:00:00Z)"
                )
            })
    }
}

impl std::fmt::Display for AsOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AsOf::Day(day) => write!(f, "{day}"),
            AsOf::Version(v) => write!(f, "version {v}"),
            AsOf::Time(t) => write!(f, "{}", t.to_rfc3339()),
        }
    }
}

impl AsOf {
    /// The Delta version to read a table at (a day reads the latest: see the
    /// module doc).
    pub fn at(&self) -> At {
        match self {
            AsOf::Day(_) => At::Latest,
            AsOf::Version(v) => At::Version(*v),
            AsOf::Time(t) => At::Time(*t),
        }
    }
}

/// Suffix of a change table's change rows when it is read as of a day.
pub const CHANGES_SUFFIX: &str = "_changes";

/// How a table keeps its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// A full copy per `snapshot_date`.
    Snapshots,
    /// Change rows per `_change_date`.
    Changes,
}

impl History {
    /// The history `manifest`'s table keeps, from its partition column.
    pub fn of(manifest: &Manifest) -> Option<Self> {
        match manifest.partition_column.as_str() {
            SNAPSHOT_DATE => Some(Self::Snapshots),
            CHANGE_DATE => Some(Self::Changes),
            _ => None,
        }
    }
}

/// Days since 1970-01-01 of `day`.
pub fn day_number(day: NaiveDate) -> i32 {
    (day - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")).num_days() as i32
}

/// Registers `table` (of `manifest`) in `ctx` as of `day`; returns the names
/// registered.
pub async fn register(
    ctx: &SessionContext,
    name: &str,
    manifest: &Manifest,
    mut table: LakeTable,
    day: NaiveDate,
) -> Result<Vec<String>> {
    let day = day_number(day);
    match History::of(manifest) {
        None => {
            tracing::debug!(table = %name, "No history kept: read as it is now.");
            register_table(ctx, name, table)?;
            Ok(vec![name.to_string()])
        }
        Some(History::Snapshots) => {
            let last = table.days().filter(|d| *d <= day).max();
            table.retain_days(|d| Some(d) == last);
            register_table(ctx, name, table)?;
            Ok(vec![name.to_string()])
        }
        Some(History::Changes) => {
            let [key] = manifest.key.as_slice() else {
                return Err(Error::Query(format!(
                    "table {name}: a change table needs exactly one key column, the manifest has {:?}",
                    manifest.key
                )));
            };
            table.retain_days(|d| d <= day);
            let changes = format!("{name}{CHANGES_SUFFIX}");
            register_table(ctx, &changes, table)?;
            let sql = format!(
                "SELECT * EXCLUDE (__sluice_rank) FROM (
                   SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY {VERSION} DESC)
                          AS __sluice_rank
                   FROM {changes})
                 WHERE __sluice_rank = 1 AND {IS_DELETED} = 0",
                key = ident(key),
                changes = ident(&changes),
            );
            let view = ctx.sql(&sql).await.map_err(|e| query_error(&e))?;
            ctx.register_table(name, view.into_view())
                .map_err(|e| query_error(&e))?;
            Ok(vec![name.to_string(), changes])
        }
    }
}

fn register_table(ctx: &SessionContext, name: &str, table: LakeTable) -> Result<()> {
    ctx.register_table(name, Arc::new(table))
        .map(|_| ())
        .map_err(|e| query_error(&e))
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
