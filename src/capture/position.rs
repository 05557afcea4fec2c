//! Where a capture stands in its source, kept in the table's manifest: a
//! watermark ([`CursorValue`]) or a change stream's position
//! ([`StreamPosition`]). Plain data that the lake stores and the capture modes
//! read; it imports nothing of the lake.

use chrono::{DateTime, NaiveDate};
use mongodb::bson::Timestamp;
use serde::{Deserialize, Serialize};

use crate::source::sql::Dialect;

/// A position of the cursor column, stored in the table's manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CursorValue {
    /// A timestamp in microseconds since the epoch; `utc` when the column has a
    /// time zone (`timestamptz`), otherwise a naive timestamp.
    Timestamp { micros: i64, utc: bool },
    /// A date, in days since the epoch.
    Date { days: i32 },
    /// An integer (a sequence or version number).
    Integer { value: i64 },
}

impl CursorValue {
    /// The value as a SQL literal for `dialect`.
    pub fn sql_literal(&self, dialect: Dialect) -> String {
        match *self {
            CursorValue::Integer { value } => value.to_string(),
            CursorValue::Date { days } => {
                let date = NaiveDate::from_num_days_from_ce_opt(days + 719_163)
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .unwrap_or_default();
                match dialect {
                    Dialect::Postgres => format!("DATE '{date}'"),
                    Dialect::Mysql | Dialect::Sqlite => format!("'{date}'"),
                }
            }
            CursorValue::Timestamp { micros, utc } => {
                let text = format_micros(micros);
                match (dialect, utc) {
                    (Dialect::Postgres, true) => format!("TIMESTAMPTZ '{text}+00'"),
                    (Dialect::Postgres, false) => format!("TIMESTAMP '{text}'"),
                    (Dialect::Mysql, _) => format!("TIMESTAMP '{text}'"),
                    (Dialect::Sqlite, _) => format!("'{text}'"),
                }
            }
        }
    }
}

impl std::fmt::Display for CursorValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            CursorValue::Integer { value } => write!(f, "{value}"),
            CursorValue::Date { .. } => {
                let lit = self.sql_literal(Dialect::Sqlite);
                f.write_str(lit.trim_matches('\''))
            }
            CursorValue::Timestamp { micros, utc } => {
                write!(f, "{}{}", format_micros(micros), if utc { "Z" } else { "" })
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`: the fraction only when it is not zero, so that
/// text-typed timestamps (SQLite) compare equal to what was read.
fn format_micros(micros: i64) -> String {
    let Some(ts) = DateTime::from_timestamp_micros(micros) else {
        return micros.to_string();
    };
    if micros.rem_euclid(1_000_000) == 0 {
        ts.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        ts.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

/// A MongoDB cluster time (a BSON timestamp): seconds and an ordinal within the
/// second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterTime {
    /// Seconds since the Unix epoch.
    pub t: u32,
    /// Ordinal of the operation within that second.
    pub i: u32,
}

impl ClusterTime {
    pub fn from_bson(ts: Timestamp) -> Self {
        Self {
            t: ts.time,
            i: ts.increment,
        }
    }

    pub fn to_bson(self) -> Timestamp {
        Timestamp {
            time: self.t,
            increment: self.i,
        }
    }

    /// The cluster time right after this one: where a stream starts so as not to
    /// replay the changes at this time.
    pub fn next(self) -> Self {
        match self.i.checked_add(1) {
            Some(i) => Self { t: self.t, i },
            None => Self {
                t: self.t + 1,
                i: 0,
            },
        }
    }

    /// The `_version` of the `ordinal`-th change of one key at this time: grows
    /// with the cluster time, so ReplacingMergeTree keeps the latest change of a
    /// key across runs. Seconds take the high 32 bits, the increment the next 24
    /// (16 million operations per second), and the ordinal the low 8: the changes
    /// of one transaction share a cluster time, so a key changed twice in one
    /// transaction is told apart by its order in the stream.
    pub fn version(self, ordinal: u32) -> u64 {
        (u64::from(self.t) << 32)
            | (u64::from(self.i.min((1 << 24) - 1)) << 8)
            | u64::from(ordinal.min(255))
    }

    /// The UTC day, as days since the epoch (the `_change_date` partition).
    pub fn day(self) -> i32 {
        (i64::from(self.t) / 86_400) as i32
    }
}

impl std::fmt::Display for ClusterTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = chrono::DateTime::from_timestamp(i64::from(self.t), 0)
            .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "?".into());
        write!(f, "Timestamp({}, {}) = {when}", self.t, self.i)
    }
}

/// A row a watermark run loaded at or above the new watermark (or within the
/// lookback below it): the next run reads it again and drops it when its
/// content is unchanged, instead of rewriting its day.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeenRow {
    /// The key columns as text.
    pub key: Vec<String>,
    /// Hash of the whole row (xxh3 of Arrow's row format).
    pub hash: u64,
}

/// Where a `change_stream` table's next run resumes, kept in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The change stream's resume token (`{"_data": …}`, relaxed Extended JSON),
    /// opaque to sluice. `None` until the stream has been read once after the
    /// first snapshot: the stream then starts at `snapshot_time`.
    #[serde(default)]
    pub resume_token: Option<serde_json::Value>,
    /// The cluster time read just before the first snapshot.
    pub snapshot_time: ClusterTime,
    /// Every change at or before this cluster time is in the lake.
    pub covered_until: ClusterTime,
    /// Change events committed since the snapshot.
    #[serde(default)]
    pub events: u64,
}

impl StreamPosition {
    /// One line for `state show` and `--dry-run`.
    pub fn describe(&self) -> String {
        format!(
            "{}; changes up to cluster time {} are in the lake ({} event(s) since the snapshot of {})",
            if self.resume_token.is_some() {
                "resumes after the stored resume token"
            } else {
                "starts right after the snapshot's cluster time (no resume token yet)"
            },
            self.covered_until,
            self.events,
            self.snapshot_time
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_with_cluster_time() {
        let a = ClusterTime {
            t: 1_795_618_452,
            i: 9,
        };
        let b = ClusterTime {
            t: 1_795_618_452,
            i: 10,
        };
        let c = ClusterTime {
            t: 1_795_618_453,
            i: 1,
        };
        assert!(a.version(0) < a.version(1) && a.version(255) < b.version(0));
        assert!(b.version(0) < c.version(0));
        assert_eq!(a.version(300), a.version(255), "the ordinal saturates");
        let day = NaiveDate::from_num_days_from_ce_opt(a.day() + 719_163).unwrap();
        assert_eq!(day.to_string(), "2026-11-25");
        assert_eq!(
            a.to_string(),
            "Timestamp(1795618452, 9) = 2026-11-25T14:54:12Z"
        );
    }
}
