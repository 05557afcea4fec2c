//! Run reports as an operator reads them: the JSON reports that every run stores in
//! the lake (`_sluice/runs/<run_id>.json`, see [`crate::run`]), listed newest
//! first, shown one by one, or drawn as a small static HTML page.
//!
//! Reports are read leniently (unknown fields ignored, missing ones defaulted), so
//! reports written by older or newer versions of sluice still list.

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::Deserialize;

use crate::capture::backfill::BackfillRange;
use crate::error::{Error, Result};
use crate::lake::Lake;

/// Where run reports live, relative to the lake root.
pub const RUNS_DIR: &str = "_sluice/runs";

/// A stored run report.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StoredRun {
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    /// Set when the run was a backfill (`--since/--until`) of these cursor days.
    pub backfill: Option<BackfillRange>,
    pub tables: Vec<StoredTable>,
    pub models: Vec<StoredModel>,
    pub error: Option<String>,
}

/// One table of a stored run report.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StoredTable {
    pub table: String,
    pub rows_read: u64,
    pub rows_skipped: u64,
    pub rows_changed: u64,
    pub rows_replaced: u64,
    pub rows_deleted: u64,
    pub partitions_written: Vec<String>,
    pub files_written: u64,
    pub bytes_written: u64,
    pub partitions_loaded: Vec<String>,
    pub rows_loaded: u64,
    pub watermark_before: Option<String>,
    pub watermark_after: Option<String>,
    pub lake_rows: u64,
    pub seconds: f64,
    pub stages: crate::pipeline::StageSeconds,
    pub warnings: Vec<String>,
}

/// One SQL model of a stored run report.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StoredModel {
    pub model: String,
    pub status: serde_json::Value,
    pub rows: u64,
    pub rows_dropped: u64,
    pub rows_loaded: u64,
    pub error: Option<String>,
    pub seconds: f64,
    pub stages: crate::transform::models::ModelStageSeconds,
}

impl StoredRun {
    /// `ok`, or `failed` when the run stopped on an error.
    pub fn status(&self) -> &'static str {
        if self.error.is_some() {
            "failed"
        } else {
            "ok"
        }
    }

    /// Wall-clock seconds from start to finish, when both are known.
    pub fn seconds(&self) -> Option<f64> {
        let start = chrono::DateTime::parse_from_rfc3339(&self.started_at).ok()?;
        let end = chrono::DateTime::parse_from_rfc3339(&self.finished_at).ok()?;
        Some((end - start).num_milliseconds() as f64 / 1000.0)
    }

    /// `run`, or `backfill SINCE…UNTIL`.
    pub fn kind(&self) -> String {
        match &self.backfill {
            Some(b) => format!("backfill {}…{}", b.since, b.until),
            None => "run".into(),
        }
    }

    /// Rows written to the lake by the tables of this run.
    pub fn rows_changed(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_changed).sum()
    }
}

/// The ids of every stored run, newest first (ids start with the UTC start time).
pub async fn run_ids(lake: &Lake) -> Result<Vec<String>> {
    let prefix = lake.path(RUNS_DIR);
    let objects: Vec<_> = lake
        .store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| Error::lake(format!("listing {RUNS_DIR}: {e}")))?;
    let mut ids: Vec<String> = objects
        .iter()
        .filter_map(|meta| {
            meta.location
                .filename()?
                .strip_suffix(".json")
                .map(String::from)
        })
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    Ok(ids)
}

/// The raw JSON of one run report, by id or by a prefix matching exactly one id.
pub async fn read_raw(lake: &Lake, id: &str) -> Result<(String, serde_json::Value)> {
    let ids = run_ids(lake).await?;
    let id = if ids.iter().any(|i| i == id) {
        id.to_string()
    } else {
        let matching: Vec<&String> = ids.iter().filter(|i| i.starts_with(id)).collect();
        match matching.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(Error::Config(crate::error::ConfigError::Argument(format!(
                    "no run {id:?} in the lake's {RUNS_DIR} (`sluice runs` lists them)"
                ))))
            }
            many => {
                return Err(Error::Config(crate::error::ConfigError::Argument(format!(
                    "run id {id:?} is ambiguous: {} runs start with it",
                    many.len()
                ))))
            }
        }
    };
    let path = lake.path(&format!("{RUNS_DIR}/{id}.json"));
    let bytes = lake
        .store()
        .get(&path)
        .await
        .map_err(|e| Error::lake(format!("reading {path}: {e}")))?
        .bytes()
        .await
        .map_err(|e| Error::lake(format!("reading {path}: {e}")))?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::lake(format!("{path} is not a run report: {e}")))?;
    Ok((id, value))
}

/// One run report, parsed.
pub async fn read(lake: &Lake, id: &str) -> Result<StoredRun> {
    let (id, value) = read_raw(lake, id).await?;
    serde_json::from_value(value)
        .map_err(|e| Error::lake(format!("run report {id} is not readable: {e}")))
}

/// The newest `limit` runs, newest first.
pub async fn recent(lake: &Lake, limit: usize) -> Result<Vec<StoredRun>> {
    let mut runs = Vec::new();
    for id in run_ids(lake).await?.into_iter().take(limit) {
        runs.push(read(lake, &id).await?);
    }
    Ok(runs)
}

fn seconds_text(seconds: Option<f64>) -> String {
    seconds
        .map(|s| format!("{s:.1}"))
        .unwrap_or_else(|| "-".into())
}

/// `sluice runs`: one line per run.
pub fn format_list(runs: &[StoredRun]) -> String {
    let mut out = format!(
        "{:<28} {:<20} {:>9} {:>6} {:>10}  status\n",
        "run", "started (UTC)", "seconds", "tables", "rows"
    );
    // A backfill is marked after its status.
    for run in runs {
        let started = chrono::DateTime::parse_from_rfc3339(&run.started_at)
            .map(|t| t.to_utc().format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|_| run.started_at.clone());
        out.push_str(&format!(
            "{:<28} {:<20} {:>9} {:>6} {:>10}  {}{}\n",
            run.run_id,
            started,
            seconds_text(run.seconds()),
            run.tables.len(),
            run.rows_changed(),
            run.status(),
            match run.backfill {
                Some(_) => format!("  {}", run.kind()),
                None => String::new(),
            }
        ));
    }
    if runs.is_empty() {
        out.push_str("(no runs in the lake yet)\n");
    }
    out
}

/// Human-readable bytes (`1.5 MiB`).
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A list of partition days, shortened to the first and last when long.
pub fn days_text(days: &[String]) -> String {
    match days {
        [] => "none".into(),
        [one] => one.clone(),
        [first, .., last] if days.len() > 4 => {
            format!("{} days, {first} … {last}", days.len())
        }
        _ => days.join(", "),
    }
}

/// `sluice runs show ID`: one run in full.
pub fn format_run(run: &StoredRun) -> String {
    let mut out = format!("run {}: {}\n", run.run_id, run.status());
    out.push_str(&format!(
        "  started {}, finished {}, {} seconds\n",
        run.started_at,
        if run.finished_at.is_empty() {
            "-"
        } else {
            run.finished_at.as_str()
        },
        seconds_text(run.seconds())
    ));
    if let Some(b) = &run.backfill {
        out.push_str(&format!(
            "  backfill of the cursor's days {} … {} (UTC); watermarks kept\n",
            b.since, b.until
        ));
    }
    if let Some(error) = &run.error {
        out.push_str(&format!("  error: {error}\n"));
    }
    for t in &run.tables {
        out.push_str(&format!("\ntable {} ({:.2} s)\n", t.table, t.seconds));
        let s = &t.stages;
        out.push_str(&format!(
            "  seconds: extract {:.2}, merge {:.2}, commit {:.2}, ClickHouse {:.2}\n",
            s.extract, s.merge, s.commit, s.warehouse
        ));
        out.push_str(&format!(
            "  rows: {} read, {} skipped as already loaded, {} written, {} replaced by key, {} loaded into ClickHouse; {} in the lake\n",
            t.rows_read, t.rows_skipped, t.rows_changed, t.rows_replaced, t.rows_loaded, t.lake_rows
        ));
        if t.rows_deleted > 0 {
            out.push_str(&format!(
                "  deletes: {} row(s) the source no longer has removed\n",
                t.rows_deleted
            ));
        }
        out.push_str(&format!(
            "  files: {} written, {}\n",
            t.files_written,
            bytes_text(t.bytes_written)
        ));
        out.push_str(&format!(
            "  partitions written: {}\n  partitions loaded:  {}\n",
            days_text(&t.partitions_written),
            days_text(&t.partitions_loaded)
        ));
        out.push_str(&format!(
            "  watermark: {} -> {}\n",
            t.watermark_before.as_deref().unwrap_or("-"),
            t.watermark_after.as_deref().unwrap_or("-")
        ));
        for w in &t.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
    }
    if !run.models.is_empty() {
        out.push_str("\nmodels\n");
        for m in &run.models {
            let status = m
                .status
                .as_str()
                .map(str::to_lowercase)
                .unwrap_or_else(|| m.status.to_string());
            out.push_str(&format!(
                "  {:<28} {:<10} {:>10} rows {:>8} dropped {:>10} loaded {:>8.2} s\n",
                m.model, status, m.rows, m.rows_dropped, m.rows_loaded, m.seconds
            ));
            let s = &m.stages;
            out.push_str(&format!(
                "    seconds: build {:.2}, checks {:.2}, commit {:.2}, ClickHouse {:.2}\n",
                s.build, s.checks, s.commit, s.warehouse
            ));
            if let Some(error) = &m.error {
                out.push_str(&format!("    error: {error}\n"));
            }
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One inline SVG bar chart: a bar per run (oldest left), with its value as a
/// tooltip and a label.
fn bar_chart(title: &str, runs: &[&StoredRun], value: impl Fn(&StoredRun) -> f64) -> String {
    const BAR: f64 = 28.0;
    const GAP: f64 = 8.0;
    const HEIGHT: f64 = 120.0;
    let values: Vec<f64> = runs.iter().map(|r| value(r)).collect();
    let max = values.iter().cloned().fold(0.0_f64, f64::max).max(1e-9);
    let width = (BAR + GAP) * values.len().max(1) as f64 + GAP;
    let mut svg = format!(
        r#"<figure><figcaption>{}</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{}" role="img" aria-label="{}">"#,
        escape(title),
        HEIGHT + 20.0,
        escape(title)
    );
    for (i, (run, v)) in runs.iter().zip(&values).enumerate() {
        let h = (v / max * HEIGHT).max(if *v > 0.0 { 1.0 } else { 0.0 });
        let x = GAP + i as f64 * (BAR + GAP);
        let class = if run.error.is_some() { "failed" } else { "ok" };
        let label = if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        };
        svg.push_str(&format!(
            r#"<rect class="{class}" x="{x}" y="{}" width="{BAR}" height="{h}"><title>{}: {label}</title></rect><text x="{}" y="{}" font-size="9" text-anchor="middle">{label}</text>"#,
            HEIGHT - h + 10.0,
            escape(&run.run_id),
            x + BAR / 2.0,
            HEIGHT + 19.0
        ));
    }
    svg.push_str("</svg></figure>\n");
    svg
}

/// `sluice runs --html FILE`: a self-contained page (no external assets) with,
/// per table, the rows written and the seconds spent in each of `runs` (newest
/// first, as [`recent`] returns them), as SVG bar charts.
pub fn html(runs: &[StoredRun]) -> String {
    let oldest_first: Vec<&StoredRun> = runs.iter().rev().collect();
    let mut tables: Vec<String> = Vec::new();
    for run in &oldest_first {
        for t in &run.tables {
            if !tables.contains(&t.table) {
                tables.push(t.table.clone());
            }
        }
    }
    let mut body = String::new();
    body.push_str("<h1>sluice runs</h1>\n<table id=\"runs\"><thead><tr><th>run</th><th>started</th><th>seconds</th><th>tables</th><th>rows</th><th>status</th></tr></thead><tbody>\n");
    for run in runs {
        body.push_str(&format!(
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            run.status(),
            escape(&run.run_id),
            escape(&run.started_at),
            seconds_text(run.seconds()),
            run.tables.len(),
            run.rows_changed(),
            match run.backfill {
                Some(_) => format!("{} ({})", run.status(), escape(&run.kind())),
                None => run.status().to_string(),
            }
        ));
    }
    body.push_str("</tbody></table>\n");
    for table in &tables {
        let find = |run: &StoredRun| run.tables.iter().find(|t| &t.table == table).cloned();
        body.push_str(&format!(
            "<section class=\"table\" data-table=\"{0}\"><h2>{0}</h2>\n",
            escape(table)
        ));
        body.push_str(&bar_chart(
            &format!("{table}: rows written per run"),
            &oldest_first,
            |r| find(r).map(|t| t.rows_changed as f64).unwrap_or(0.0),
        ));
        body.push_str(&bar_chart(
            &format!("{table}: seconds per run"),
            &oldest_first,
            |r| find(r).map(|t| t.seconds).unwrap_or(0.0),
        ));
        body.push_str("</section>\n");
    }
    if runs.is_empty() {
        body.push_str("<p>No runs in the lake yet.</p>\n");
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sluice runs</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table#runs {{ border-collapse: collapse; }}
#runs td, #runs th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
#runs tr.failed {{ background: #fdd; }}
rect.ok {{ fill: #4a7fb5; }}
rect.failed {{ fill: #c0392b; }}
figure {{ display: inline-block; margin: 0 2em 1em 0; }}
figcaption {{ font-size: 0.9em; }}
</style></head>
<body>
{body}</body></html>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, rows: u64, error: Option<&str>) -> StoredRun {
        StoredRun {
            run_id: id.into(),
            started_at: "2026-11-26T02:00:00+00:00".into(),
            finished_at: "2026-11-26T02:00:03.500+00:00".into(),
            tables: vec![StoredTable {
                table: "transactions".into(),
                rows_changed: rows,
                seconds: 1.25,
                ..Default::default()
            }],
            error: error.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn lists_runs_with_duration_rows_and_status() {
        let text = format_list(&[run("b", 7, Some("boom")), run("a", 3, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with('b') && lines[1].contains("3.5"));
        assert!(lines[1].ends_with("failed"), "{text}");
        assert!(lines[2].ends_with("ok"), "{text}");
    }

    #[test]
    fn reads_reports_with_unknown_and_missing_fields() {
        let json = r#"{"run_id": "x", "tables": [{"table": "t", "rows_read": 2, "new_field": 1}]}"#;
        let run: StoredRun = serde_json::from_str(json).unwrap();
        assert_eq!(run.tables[0].rows_read, 2);
        assert_eq!(run.status(), "ok");
        assert!(run.seconds().is_none());
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let page = html(&[run("<b>", 5, None)]);
        assert!(page.contains("&lt;b&gt;"));
        assert!(!page.contains("<b>"));
        assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"));
        assert!(page.contains("<svg"));
    }

    #[test]
    fn a_backfill_is_marked_with_its_days() {
        let json = r#"{"run_id": "x", "backfill": {"since": "2026-01-01", "until": "2026-01-31"}}"#;
        let run: StoredRun = serde_json::from_str(json).unwrap();
        assert!(format_list(std::slice::from_ref(&run))
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("ok  backfill 2026-01-01…2026-01-31"));
        assert!(format_run(&run).contains("backfill of the cursor's days 2026-01-01 … 2026-01-31"));
        assert!(html(&[run]).contains("ok (backfill 2026-01-01…2026-01-31)"));
    }

    #[test]
    fn days_are_shortened_when_many() {
        let days: Vec<String> = (1..=9).map(|d| format!("2026-11-0{d}")).collect();
        assert_eq!(days_text(&days), "9 days, 2026-11-01 … 2026-11-09");
        assert_eq!(days_text(&days[..2]), "2026-11-01, 2026-11-02");
    }
}
