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
    // The checks decided row by row (not_null, accepted_values) are counted in one
    // scan of the model; a sample is fetched only for a check that fails.
    let mut row_checks = Vec::new();
    for column in &checks.not_null {
        row_checks.push((
            format!("not_null({column})"),
            format!("{} IS NULL", quote(column)),
        ));
    }
    for (column, values) in &checks.accepted_values {
        let list = values
            .iter()
            .map(|v| literal(v))
            .collect::<Vec<_>>()
            .join(", ");
        row_checks.push((
            format!("accepted_values({column}: {})", values.join(", ")),
            format!(
                "{c} IS NOT NULL AND CAST({c} AS VARCHAR) NOT IN ({list})",
                c = quote(column)
            ),
        ));
    }
    let mut row_outcomes = Vec::new();
    if !row_checks.is_empty() {
        let counts = row_checks
            .iter()
            .map(|(_, breaks)| format!("count(CASE WHEN {breaks} THEN 1 END)"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut counts = integers(ctx, &format!("SELECT {counts} FROM {m}")).await?;
        // An aggregate without GROUP BY has its one row even on no rows.
        counts.resize(row_checks.len(), 0);
        for ((check, breaks), failing_rows) in row_checks.into_iter().zip(counts) {
            let rows = format!("SELECT * FROM {m} WHERE {breaks}");
            row_outcomes.push(outcome(ctx, check, failing_rows, &rows).await?);
        }
    }
    // Reported in the order of the configuration's sections.
    let accepted = row_outcomes.split_off(checks.not_null.len());
    let mut outcomes = row_outcomes;
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
        let worst = format!("{duplicates} ORDER BY duplicate_rows DESC");
        outcomes.push(outcome(ctx, check, total, &worst).await?);
    }
    outcomes.extend(accepted);
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
    outcome(ctx, check, count, rows_sql).await
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
    use arrow::array::AsArray;
    let batches = collect(ctx, sql).await?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    batch
        .columns()
        .iter()
        .map(|column| {
            let column = arrow::compute::cast(column, &arrow::datatypes::DataType::UInt64)?;
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

use arrow::array::Array as _;
