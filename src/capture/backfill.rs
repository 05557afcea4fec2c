//! Backfill of a date range of the cursor: `sluice run --table T --since D1 --until
//! D2` reads again the source rows whose cursor falls on the days D1 … D2 (UTC,
//! both included) and merges them into their day partitions by key, as a run
//! does. It repairs what a watermark cannot see: rows inserted or updated with a
//! cursor below the watermark (backdated rows, a clock that went back).
//!
//! A backfill does not move the table's capture position: the watermark and the
//! keys loaded at exactly it are committed as they were, whatever the rows read,
//! so the next nightly run reads from where the last one stopped. Rows of the
//! range that are already in the lake as they are rewrite nothing (see
//! [`crate::capture::merge`]), so a backfill run twice changes nothing the second
//! time. Everything else (staging, the manifest switch, pending ClickHouse days
//! and `REPLACE PARTITION`) is the run's own commit protocol, so a crash loses and
//! duplicates nothing.

use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::capture::cursor::CursorValue;
use crate::config::{CaptureMode, Config};
use crate::error::{ConfigError, Error, Result};
use crate::source::sql::Dialect;

/// The days of the cursor a backfill reads again, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backfill {
    pub since: NaiveDate,
    pub until: NaiveDate,
}

/// A backfill's range as the run report stores it (`YYYY-MM-DD`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackfillRange {
    pub since: String,
    pub until: String,
}

/// The cursor values a backfill reads: `from <= cursor < to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorRange {
    pub from: CursorValue,
    pub to: CursorValue,
}

impl Backfill {
    /// The days `since` … `until`; `since` after `until` is an error.
    pub fn new(since: NaiveDate, until: NaiveDate) -> Result<Self, ConfigError> {
        if since > until {
            return Err(ConfigError::Argument(format!(
                "--since {since} is after --until {until}: a backfill reads the days from --since to --until, both included"
            )));
        }
        Ok(Self { since, until })
    }

    pub fn range(&self) -> BackfillRange {
        BackfillRange {
            since: self.since.to_string(),
            until: self.until.to_string(),
        }
    }

    /// The range in the cursor's own type, which the table's watermark tells
    /// (the cursor column is read with the same type every run): from `since`
    /// at 00:00 UTC up to, not including, the day after `until`. A table never
    /// loaded (no watermark) and an integer cursor cannot be backfilled by date.
    pub fn cursor_range(
        &self,
        table: &str,
        cursor: &str,
        watermark: Option<&CursorValue>,
    ) -> Result<CursorRange> {
        let invalid = |reason: String| {
            Error::Config(ConfigError::Invalid {
                table: table.to_string(),
                field: "--since/--until".into(),
                reason,
            })
        };
        let end = self
            .until
            .checked_add_days(Days::new(1))
            .ok_or_else(|| invalid(format!("{} is out of range", self.until)))?;
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
        let micros = |day: NaiveDate| {
            day.and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .timestamp_micros()
        };
        let days = |day: NaiveDate| (day - epoch).num_days() as i32;
        match watermark {
            None => Err(invalid(
                "cannot backfill a table that has no watermark yet (never loaded, or reset): a normal run reads every row".into(),
            )),
            Some(CursorValue::Integer { .. }) => Err(invalid(format!(
                "select days of the cursor, but cursor {cursor:?} is an integer"
            ))),
            Some(CursorValue::Timestamp { utc, .. }) => Ok(CursorRange {
                from: CursorValue::Timestamp {
                    micros: micros(self.since),
                    utc: *utc,
                },
                to: CursorValue::Timestamp {
                    micros: micros(end),
                    utc: *utc,
                },
            }),
            Some(CursorValue::Date { .. }) => Ok(CursorRange {
                from: CursorValue::Date {
                    days: days(self.since),
                },
                to: CursorValue::Date { days: days(end) },
            }),
        }
    }
}

impl std::fmt::Display for Backfill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} … {}", self.since, self.until)
    }
}

/// Only watermark tables can be backfilled: checks the tables a run selects
/// (`tables`, or all when empty) before anything is read.
pub fn check_tables(config: &Config, tables: &[String]) -> Result<()> {
    let selected = config
        .tables
        .iter()
        .filter(|t| tables.is_empty() || tables.contains(&t.name));
    for t in selected {
        let (what, why) = match t.mode() {
            CaptureMode::Watermark => continue,
            CaptureMode::Snapshot => ("snapshot", "reads the whole collection every run"),
            CaptureMode::SnapshotDiff => ("snapshot_diff", "reads the whole collection every run"),
            CaptureMode::ChangeStream => (
                "change_stream",
                "follows the change stream (sluice run --full-refresh --table T re-snapshots it)",
            ),
        };
        return Err(Error::Config(ConfigError::Invalid {
            table: t.name.clone(),
            field: "--since/--until".into(),
            reason: format!(
                "backfill watermark tables only; this table is mode = {what:?}, which {why}"
            ),
        }));
    }
    Ok(())
}

/// The source query of a backfill, ordered by the partition column like a run's.
pub fn backfill_query(
    dialect: Dialect,
    base: &str,
    cursor: &str,
    partition_by: &str,
    range: &CursorRange,
) -> String {
    let cursor = dialect.ident(cursor);
    format!(
        "SELECT * FROM ({base}) AS sluice_src WHERE {cursor} >= {} AND {cursor} < {} ORDER BY {}",
        range.from.sql_literal(dialect),
        range.to.sql_literal(dialect),
        dialect.ident(partition_by)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn since_after_until_is_an_error() {
        assert!(Backfill::new(day("2026-01-02"), day("2026-01-01")).is_err());
        assert!(Backfill::new(day("2026-01-01"), day("2026-01-01")).is_ok());
    }

    #[test]
    fn range_in_the_cursor_type_and_query() {
        let b = Backfill::new(day("2026-01-01"), day("2026-01-31")).unwrap();
        let tz = CursorValue::Timestamp {
            micros: 0,
            utc: true,
        };
        let range = b.cursor_range("t", "updated_at", Some(&tz)).unwrap();
        assert_eq!(
            backfill_query(Dialect::Postgres, "SELECT 1", "updated_at", "created_at", &range),
            "SELECT * FROM (SELECT 1) AS sluice_src WHERE \"updated_at\" >= TIMESTAMPTZ '2026-01-01 00:00:00+00' \
             AND \"updated_at\" < TIMESTAMPTZ '2026-02-01 00:00:00+00' ORDER BY \"created_at\""
        );
        let date = b
            .cursor_range("t", "d", Some(&CursorValue::Date { days: 1 }))
            .unwrap();
        assert_eq!(date.to.sql_literal(Dialect::Mysql), "'2026-02-01'");
        let int = b.cursor_range("t", "v", Some(&CursorValue::Integer { value: 1 }));
        assert!(int.unwrap_err().to_string().contains("integer"));
        assert!(b.cursor_range("t", "v", None).is_err());
    }
}
