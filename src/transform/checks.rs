//! Data checks on a model's new rows, run before the model is published: each
//! check counts the rows that break it, and a failed check is reported with its
//! count and a few of those rows.
//!
//! Every check is counted by [`RowChecks`] while the model is written, in the
//! same pass: `not_null`, `accepted_values`, `relationships` and `row_count`
//! row by row, `unique` by holding the keys seen while they fit
//! [`UNIQUE_MEMORY_BYTES`]; a `unique` check whose keys outgrow it is a query on
//! the written rows instead (an aggregate that spills). The sample of a failed
//! check is a query too, run only when the check failed.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::common::HashSet;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use super::keys::{KeySet, KeyValues};
pub use super::{literal, quote};
use crate::config::models::ChecksConfig;
pub use crate::error::CheckOutcome;

/// Memory each `unique` check may hold in the writing pass (the keys seen, e.g.
/// 36 MiB for 3M integer keys); beyond, it is counted by a query afterwards.
pub const UNIQUE_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// Rows shown in a failed check's sample.
pub const SAMPLE_ROWS: usize = 5;

/// The row-by-row checks of one model, counted on its rows as they are written
/// ([`RowChecks::observe`]), then reported by [`run_checks`].
#[derive(Default)]
pub struct RowChecks {
    /// `not_null`, then `accepted_values`, then `relationships`, in the order of
    /// the configuration.
    checks: Vec<RowCheck>,
    /// The `unique` checks, in the order of the configuration.
    unique: Vec<UniqueCheck>,
    /// Rows observed (for `row_count`).
    rows: u64,
}

/// One `unique` check counted in the writing pass: rows whose key was seen
/// before, and the distinct keys seen more than once, so that the failing rows
/// are every row of a repeated key, as `GROUP BY … HAVING count(*) > 1` counts.
struct UniqueCheck {
    /// Indices of the key columns.
    columns: Vec<usize>,
    /// The keys seen; `None` once they outgrew `budget`.
    seen: Option<KeyValues>,
    /// [`UNIQUE_MEMORY_BYTES`].
    budget: usize,
    repeated: KeyValues,
    /// Rows whose key was seen before.
    repeats: u64,
    /// Rows whose single key column is NULL (one `GROUP BY` group).
    nulls: u64,
}

impl UniqueCheck {
    fn observe(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let Some(seen) = &mut self.seen else {
            return Ok(());
        };
        let columns: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        if seen.skips_nulls() {
            self.nulls += columns[0].null_count() as u64;
        }
        let mut rows = Vec::new();
        seen.insert(&columns, |row| rows.push(row as u32))?;
        if !rows.is_empty() {
            self.repeats += rows.len() as u64;
            let rows = UInt32Array::from(rows);
            let keys = columns
                .iter()
                .map(|c| arrow::compute::take(c, &rows, None))
                .collect::<Result<Vec<_>, _>>()?;
            self.repeated.insert(&keys, |_| {})?;
        }
        if seen.memory_bytes() + self.repeated.memory_bytes() > self.budget {
            self.seen = None;
        }
        Ok(())
    }

    /// The rows breaking the check, when it was counted to the end.
    fn failing(&self) -> Option<u64> {
        self.seen.as_ref()?;
        let null_group = if self.nulls > 1 { self.nulls } else { 0 };
        Some(self.repeats + self.repeated.len() as u64 + null_group)
    }
}

struct RowCheck {
    /// What is checked, e.g. `not_null(user_key)`.
    name: String,
    /// SQL condition true on the rows that break it (for the sample).
    breaks: String,
    /// Index of the checked column.
    column: usize,
    rule: Rule,
    failing: u64,
}

enum Rule {
    NotNull,
    /// The values allowed, compared as text (`CAST(column AS VARCHAR)`).
    Accepted(HashSet<String>),
    /// Counted with the keys referred to.
    Refers(Arc<KeySet>),
    /// The same relationship is a `drop_unmatched` of the model: the rows without
    /// a match were dropped before they were counted, none is left to find.
    Enforced,
}

impl RowChecks {
    /// The row checks of `checks` on `model`, whose rows have `schema`.
    /// `key_sets` holds, for each relationship of `checks` in order, the keys it
    /// refers to; `dropped` the key sets of the model's `drop_unmatched`. Fails
    /// when a checked column is not a column of the model.
    pub fn new(
        model: &str,
        checks: &ChecksConfig,
        schema: &Schema,
        key_sets: Vec<Arc<KeySet>>,
        dropped: &[Arc<KeySet>],
    ) -> Result<Self, String> {
        let column = |name: &str| {
            schema
                .index_of(name)
                .map_err(|_| format!("the model has no column {name:?}"))
        };
        let mut row_checks = Vec::new();
        for name in &checks.not_null {
            row_checks.push(RowCheck {
                name: format!("not_null({name})"),
                breaks: format!("{} IS NULL", quote(name)),
                column: column(name)?,
                rule: Rule::NotNull,
                failing: 0,
            });
        }
        for (name, values) in &checks.accepted_values {
            let list = values
                .iter()
                .map(|v| literal(v))
                .collect::<Vec<_>>()
                .join(", ");
            row_checks.push(RowCheck {
                name: format!("accepted_values({name}: {})", values.join(", ")),
                breaks: format!(
                    "{c} IS NOT NULL AND CAST({c} AS VARCHAR) NOT IN ({list})",
                    c = quote(name)
                ),
                column: column(name)?,
                rule: Rule::Accepted(values.iter().cloned().collect()),
                failing: 0,
            });
        }
        for (rel, keys) in checks.relationships.iter().zip(key_sets) {
            row_checks.push(RowCheck {
                name: format!("relationships({} → {}.{})", rel.column, rel.to, rel.field()),
                breaks: format!(
                    "{m}.{c} IS NOT NULL AND NOT EXISTS \
                     (SELECT 1 FROM {to} AS __parent WHERE __parent.{f} = {m}.{c})",
                    m = quote(model),
                    c = quote(&rel.column),
                    to = quote(&rel.to),
                    f = quote(rel.field()),
                ),
                column: column(&rel.column)?,
                rule: if dropped.iter().any(|d| Arc::ptr_eq(d, &keys)) {
                    Rule::Enforced
                } else {
                    Rule::Refers(keys)
                },
                failing: 0,
            });
        }
        let mut unique = Vec::new();
        for list in &checks.unique {
            let columns = list
                .split(',')
                .map(|c| column(c.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let types: Vec<DataType> = columns
                .iter()
                .map(|&i| schema.field(i).data_type().clone())
                .collect();
            let keys = || KeyValues::new(&types).map_err(|e| e.to_string());
            unique.push(UniqueCheck {
                columns,
                seen: Some(keys()?),
                budget: UNIQUE_MEMORY_BYTES,
                repeated: keys()?,
                repeats: 0,
                nulls: 0,
            });
        }
        Ok(Self {
            checks: row_checks,
            unique,
            rows: 0,
        })
    }

    /// Counts the rows of `batch` that break each check.
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        self.rows += batch.num_rows() as u64;
        for check in &mut self.checks {
            let values = batch.column(check.column);
            check.failing += match &check.rule {
                Rule::NotNull => values.null_count() as u64,
                Rule::Accepted(allowed) => {
                    let text = arrow::compute::cast(values, &DataType::Utf8)?;
                    let text = text.as_string::<i32>();
                    text.iter()
                        .filter(|v| v.is_some_and(|v| !allowed.contains(v)))
                        .count() as u64
                }
                Rule::Refers(keys) => keys.orphans(batch)?,
                Rule::Enforced => 0,
            };
        }
        for check in &mut self.unique {
            check.observe(batch)?;
        }
        Ok(())
    }
}

/// The outcomes of every check of `checks` on `model` as registered in `ctx`
/// (its new rows), in the order of the configuration's sections: `counted`
/// holds the checks counted while those rows were written (a `unique` check
/// that outgrew its memory is counted here, by a query).
pub async fn run_checks(
    ctx: &SessionContext,
    model: &str,
    checks: &ChecksConfig,
    counted: RowChecks,
) -> datafusion::error::Result<Vec<CheckOutcome>> {
    let m = quote(model);
    let mut outcomes = Vec::new();
    let mut after_unique = Vec::new();
    for check in counted.checks {
        let rows = format!("SELECT * FROM {m} WHERE {}", check.breaks);
        let outcome = outcome(ctx, check.name, check.failing, &rows).await?;
        match check.rule {
            Rule::NotNull => outcomes.push(outcome),
            _ => after_unique.push(outcome),
        }
    }
    for (columns, counted) in checks.unique.iter().zip(&counted.unique) {
        let list = columns
            .split(',')
            .map(|c| quote(c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let duplicates = format!(
            "SELECT {list}, count(*) AS duplicate_rows FROM {m} GROUP BY {list} HAVING count(*) > 1"
        );
        let check = format!("unique({columns})");
        let total = match counted.failing() {
            Some(total) => total,
            None => {
                scalar(
                    ctx,
                    &format!(
                    "SELECT CAST(COALESCE(sum(duplicate_rows), 0) AS BIGINT) FROM ({duplicates})"
                ),
                )
                .await?
            }
        };
        let worst = format!("{duplicates} ORDER BY duplicate_rows DESC");
        outcomes.push(outcome(ctx, check, total, &worst).await?);
    }
    outcomes.extend(after_unique);
    if let Some(bounds) = checks.row_count {
        let rows = counted.rows;
        let low = bounds.min.is_some_and(|min| rows < min);
        let high = bounds.max.is_some_and(|max| rows > max);
        let describe = |b: Option<u64>| b.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        outcomes.push(CheckOutcome {
            check: format!(
                "row_count({}..{})",
                describe(bounds.min),
                describe(bounds.max)
            ),
            failing_rows: if low || high { rows } else { 0 },
            sample: if low || high {
                format!("the model has {rows} row(s)")
            } else {
                String::new()
            },
        });
    }
    Ok(outcomes)
}

/// The outcome of `check` broken by `failing_rows` rows, with a sample of
/// `rows_sql` (the breaking rows) fetched only when there are any.
async fn outcome(
    ctx: &SessionContext,
    check: String,
    failing_rows: u64,
    rows_sql: &str,
) -> datafusion::error::Result<CheckOutcome> {
    let sample = if failing_rows > 0 {
        sample(ctx, rows_sql).await?
    } else {
        String::new()
    };
    Ok(CheckOutcome {
        check,
        failing_rows,
        sample,
    })
}

/// The first [`SAMPLE_ROWS`] rows of a query as a pretty-printed table.
async fn sample(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<String> {
    let batches = collect(ctx, &format!("SELECT * FROM ({sql}) LIMIT {SAMPLE_ROWS}")).await?;
    Ok(arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
}

/// The one integer of a one-row query (0 when it is NULL or there is no row).
async fn scalar(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<u64> {
    Ok(integers(ctx, sql).await?.first().copied().unwrap_or(0))
}

/// The integers of the first row of a query, one per column (NULL as 0).
async fn integers(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<Vec<u64>> {
    let batches = collect(ctx, sql).await?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    batch
        .columns()
        .iter()
        .map(|column| {
            let column = arrow::compute::cast(column, &DataType::UInt64)?;
            let column = column.as_primitive::<arrow::datatypes::UInt64Type>();
            Ok(if column.is_valid(0) {
                column.value(0)
            } else {
                0
            })
        })
        .collect()
}

/// A small result (counts, samples); never used for a model's rows.
async fn collect(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<Vec<RecordBatch>> {
    ctx.sql(sql)
        .await?
        .execute_stream()
        .await?
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::Field;

    use super::*;

    fn batch(ids: Vec<Option<i64>>) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int64Array::from(ids))]).unwrap()
    }

    #[test]
    fn unique_counts_every_row_of_a_repeated_key_and_gives_up_past_its_budget() {
        let config = ChecksConfig {
            unique: vec!["id".into()],
            ..Default::default()
        };
        let schema = batch(vec![]).schema();
        let mut checks = RowChecks::new("m", &config, &schema, Vec::new(), &[]).unwrap();
        checks
            .observe(&batch(vec![Some(1), Some(2), Some(2), None]))
            .unwrap();
        checks
            .observe(&batch(vec![Some(3), Some(3), Some(3), None, Some(4)]))
            .unwrap();
        // 2 twice, 3 three times, NULL twice (one group, as in GROUP BY).
        assert_eq!(checks.unique[0].failing(), Some(7));
        assert_eq!(checks.rows, 9);

        let mut checks = RowChecks::new("m", &config, &schema, Vec::new(), &[]).unwrap();
        checks.unique[0].budget = 0;
        checks.observe(&batch(vec![Some(1)])).unwrap();
        assert_eq!(checks.unique[0].failing(), None, "left to the query");
    }
}
