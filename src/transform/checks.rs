//! Data checks on a model's new rows, run before the model is published: each
//! check is a query for the rows that break it, reported with their count and a
//! few of them.

use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use serde::Serialize;

use super::config::ChecksConfig;

/// Rows shown in a failed check's sample.
pub const SAMPLE_ROWS: usize = 5;

/// The outcome of one check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckOutcome {
    /// What was checked, e.g. `not_null(user_key)`.
    pub check: String,
    /// Rows breaking the check (0: it passed).
    pub failing_rows: u64,
    /// A few of those rows, as a pretty-printed table.
    pub sample: String,
}

impl CheckOutcome {
    pub fn passed(&self) -> bool {
        self.failing_rows == 0
    }
}

impl std::fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed on {} row(s)", self.check, self.failing_rows)?;
        if !self.sample.is_empty() {
            write!(f, ", e.g.\n{}", self.sample)?;
        }
        Ok(())
    }
}

/// A SQL identifier, quoted so its case is kept.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Runs every check of `checks` against `model` as registered in `ctx`.
pub async fn run_checks(
    ctx: &SessionContext,
    model: &str,
    checks: &ChecksConfig,
) -> datafusion::error::Result<Vec<CheckOutcome>> {
    let m = quote(model);
    let mut outcomes = Vec::new();
    for column in &checks.not_null {
        let rows = format!("SELECT * FROM {m} WHERE {} IS NULL", quote(column));
        outcomes.push(failing(ctx, format!("not_null({column})"), &rows).await?);
    }
    for columns in &checks.unique {
        let list = columns
            .split(',')
            .map(|c| quote(c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let duplicates = format!(
            "SELECT {list}, count(*) AS duplicate_rows FROM {m} GROUP BY {list} HAVING count(*) > 1"
        );
        let check = format!("unique({columns})");
        let total = scalar(
            ctx,
            &format!("SELECT CAST(COALESCE(sum(duplicate_rows), 0) AS BIGINT) FROM ({duplicates})"),
        )
        .await?;
        let sample = if total > 0 {
            sample(ctx, &format!("{duplicates} ORDER BY duplicate_rows DESC")).await?
        } else {
            String::new()
        };
        outcomes.push(CheckOutcome {
            check,
            failing_rows: total,
            sample,
        });
    }
    for (column, values) in &checks.accepted_values {
        let list = values
            .iter()
            .map(|v| literal(v))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = format!(
            "SELECT * FROM {m} WHERE {c} IS NOT NULL AND CAST({c} AS VARCHAR) NOT IN ({list})",
            c = quote(column)
        );
        outcomes.push(
            failing(
                ctx,
                format!("accepted_values({column}: {})", values.join(", ")),
                &rows,
            )
            .await?,
        );
    }
    for rel in &checks.relationships {
        let rows = format!(
            "SELECT * FROM {m} AS __child WHERE __child.{c} IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM {to} AS __parent WHERE __parent.{f} = __child.{c})",
            c = quote(&rel.column),
            to = quote(&rel.to),
            f = quote(rel.field()),
        );
        outcomes.push(
            failing(
                ctx,
                format!("relationships({} → {}.{})", rel.column, rel.to, rel.field()),
                &rows,
            )
            .await?,
        );
    }
    if let Some(bounds) = checks.row_count {
        let rows = scalar(ctx, &format!("SELECT count(*) FROM {m}")).await?;
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

/// The count of the rows of `rows_sql`, and a sample of them when there are any.
async fn failing(
    ctx: &SessionContext,
    check: String,
    rows_sql: &str,
) -> datafusion::error::Result<CheckOutcome> {
    let count = scalar(ctx, &format!("SELECT count(*) FROM ({rows_sql})")).await?;
    let sample = if count > 0 {
        sample(ctx, rows_sql).await?
    } else {
        String::new()
    };
    Ok(CheckOutcome {
        check,
        failing_rows: count,
        sample,
    })
}

/// The first [`SAMPLE_ROWS`] rows of a query as a pretty-printed table.
async fn sample(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<String> {
    let batches = collect(ctx, &format!("SELECT * FROM ({sql}) LIMIT {SAMPLE_ROWS}")).await?;
    Ok(arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
}

/// The one integer of a one-row query.
pub(crate) async fn scalar(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<u64> {
    let batches = collect(ctx, sql).await?;
    let value = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::UInt64))
        .transpose()?
        .and_then(|a| {
            use arrow::array::AsArray;
            let a = a.as_primitive::<arrow::datatypes::UInt64Type>();
            a.is_valid(0).then(|| a.value(0))
        });
    Ok(value.unwrap_or(0))
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

use arrow::array::Array as _;
