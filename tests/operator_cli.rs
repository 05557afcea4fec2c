//! The operator's commands against a lake built by `sluice run` from PostgreSQL:
//! `sluice runs`, `runs show`, `state show`, `state reset`, `run --dry-run`,
//! `run --full-refresh`, `--log-format json`, and the exit codes they use.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

/// 48 rows over 2026-11-23, -24 and -25 (UTC).
async fn seed(pg: &PgDb) {
    pg.exec(
        "CREATE TABLE transactions (
            id bigint PRIMARY KEY,
            amount numeric(12,2) NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL);
         INSERT INTO transactions
         SELECT g, (g * 1.25)::numeric(12,2),
                timestamptz '2026-11-23 00:00:00+00' + g * interval '90 minutes',
                timestamptz '2026-11-26 12:00:00+00' + g * interval '1 second'
         FROM generate_series(0, 47) g;",
    )
    .await;
}

fn config(lake: &Path, pg_url: &str) -> String {
    format!(
        r#"
[lake]
url = "{}"

[sources.app]
kind = "postgres"
url = "{pg_url}"

[[table]]
name = "transactions"
source = "app"
source_table = "public.transactions"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
"#,
        lake.display()
    )
}

fn sluice_cli(args: &[&str]) -> Output {
    tokio::task::block_in_place(|| sluice(args, &[]))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn ok(args: &[&str]) -> String {
    let out = sluice_cli(args);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "sluice {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

fn code(args: &[&str]) -> (i32, String) {
    let out = sluice_cli(args);
    let (stdout, stderr) = text(&out);
    (
        out.status.code().unwrap_or(-1),
        format!("{stdout}\n{stderr}"),
    )
}

fn manifest(lake: &Path) -> serde_json::Value {
    table_state_blocking(lake.to_str().unwrap(), "transactions")
}

fn parquet_files(lake: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, n);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(&lake.join("transactions"), &mut n);
    n
}

fn run_reports(lake: &Path) -> usize {
    std::fs::read_dir(lake.join("_sluice/runs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The `transactions` summary line's `changed` column.
fn changed(run_stdout: &str) -> String {
    let line = run_stdout
        .lines()
        .find(|l| l.starts_with("transactions"))
        .unwrap_or_else(|| panic!("no report line: {run_stdout}"));
    line.split_whitespace().nth(2).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_state_dry_run_reset_and_full_refresh() {
    let name = unique("ops_cli");
    let pg = PgDb::create(&name).await;
    seed(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let cfg = write_config(&dir, &config(&lake, &pg.url));
    let cfg = cfg.to_str().unwrap();

    // Two runs: the first loads 48 rows, the second nothing.
    let first = ok(&["run", "--config", cfg]);
    assert_eq!(changed(&first), "48", "{first}");
    assert!(
        first.contains("partitions 2026-11-23, 2026-11-24, 2026-11-25"),
        "{first}"
    );
    let second = ok(&["run", "--config", cfg]);
    assert_eq!(changed(&second), "0", "{second}");

    // sluice runs: newest first.
    let list = ok(&["runs", "--config", cfg]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    let newest = lines[1].split_whitespace().next().unwrap().to_string();
    let oldest = lines[2].split_whitespace().next().unwrap().to_string();
    assert!(newest > oldest, "{list}");
    assert!(second.contains(&newest), "{list}\n{second}");
    assert!(
        lines[2].ends_with("ok") && lines[2].contains(" 48 "),
        "{list}"
    );

    // sluice runs show: by a unique prefix, human and JSON.
    let shown = ok(&["runs", "show", "--config", cfg, &oldest]);
    assert!(shown.contains("table transactions"), "{shown}");
    assert!(shown.contains("48 written"), "{shown}");
    assert!(
        shown.contains("watermark: - -> 2026-11-26 12:00:47Z"),
        "{shown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["runs", "show", "--config", cfg, "--json", &oldest])).unwrap();
    assert_eq!(json["run_id"], oldest.as_str());
    assert_eq!(json["tables"][0]["rows_changed"], 48);
    // Seconds per stage: the extract wrote files (a local lake: no ClickHouse stage).
    let stages = &json["tables"][0]["stages"];
    assert!(stages["extract"].as_f64().unwrap() > 0.0, "{json}");
    assert_eq!(stages["warehouse"].as_f64(), Some(0.0), "{json}");
    assert!(shown.contains("seconds: extract "), "{shown}");
    let (exit, out) = code(&["runs", "show", "--config", cfg, "no-such-run"]);
    assert_eq!(exit, 2, "{out}");

    // The HTML page of the runs.
    let page = dir.path().join("runs.html");
    ok(&["runs", "--config", cfg, "--html", page.to_str().unwrap()]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<svg") && html.contains(&newest), "{html}");

    // sluice state show.
    let state = ok(&["state", "show", "--config", cfg]);
    assert!(
        state.contains("partitions: 3 (2026-11-23 … 2026-11-25), 48 rows"),
        "{state}"
    );
    assert!(state.contains("schema version 1"), "{state}");
    assert!(state.contains("pending ClickHouse loads: none"), "{state}");

    // Dry run: the query from the watermark; nothing written.
    let before = manifest(&lake);
    let reports = run_reports(&lake);
    let plan = ok(&["run", "--config", cfg, "--dry-run"]);
    assert!(
        plan.contains(
            r#"WHERE "updated_at" >= TIMESTAMPTZ '2026-11-26 12:00:47+00' ORDER BY "created_at""#
        ),
        "{plan}"
    );
    assert!(plan.contains("partitions: 3"), "{plan}");
    assert_eq!(manifest(&lake), before);
    assert_eq!(run_reports(&lake), reports);
    assert!(!lake.join("transactions/_lock.json").exists());

    // Reset: refused without a terminal and without --yes (stdin is not a terminal here).
    let (exit, out) = code(&["state", "reset", "--config", cfg, "--table", "transactions"]);
    assert_eq!(exit, 2, "{out}");
    assert!(out.contains("--yes"), "{out}");
    assert_eq!(manifest(&lake), before);
    let (exit, out) = code(&[
        "state", "reset", "--config", cfg, "--table", "nope", "--yes",
    ]);
    assert_eq!(exit, 2, "{out}");

    let out = ok(&[
        "state",
        "reset",
        "--config",
        cfg,
        "--table",
        "transactions",
        "--yes",
    ]);
    assert!(out.contains("48 row(s)"), "{out}");
    let reset = manifest(&lake);
    assert_eq!(reset["partitions"], serde_json::json!({}));
    assert!(reset["watermark"].is_null());
    assert!(reset["version"].as_u64() > before["version"].as_u64());
    assert_eq!(parquet_files(&lake), 0);
    assert!(!lake.join("transactions/_lock.json").exists());
    let again = ok(&["run", "--config", cfg]);
    assert_eq!(changed(&again), "48", "{again}");

    // Full refresh: needs --table, then reloads everything.
    let (exit, out) = code(&["run", "--config", cfg, "--full-refresh"]);
    assert_eq!(exit, 2, "{out}");
    let refreshed = ok(&[
        "run",
        "--config",
        cfg,
        "--full-refresh",
        "--table",
        "transactions",
    ]);
    assert_eq!(changed(&refreshed), "48", "{refreshed}");
    assert_eq!(parquet_files(&lake), 3);

    // JSON logs: every stderr line is one JSON object.
    let out = sluice_cli(&["run", "--config", cfg, "--log-format", "json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string(), "{line}");
    }
    pg.drop().await;
}

/// `sluice runs` on a lake without runs, and on a config that does not parse.
#[test]
fn runs_on_an_empty_lake_and_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let cfg = write_config(&dir, &config(&lake, "postgres://u@127.0.0.1:1/x"));
    let out = sluice(&["runs", "--config", cfg.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("no runs"), "{stdout}");
    std::fs::write(&cfg, "[lake]\nurl = 1\n").unwrap();
    let out = sluice(&["runs", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = sluice(&["state", "show", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
}

/// Every exit code documented in README.md is produced by src/error.rs (or is
/// success), and every code src/error.rs produces is documented.
#[test]
fn exit_codes_are_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let errors = std::fs::read_to_string(root.join("src/error.rs")).unwrap();
    let section = readme
        .split("## Exit codes")
        .nth(1)
        .expect("README has an Exit codes section");
    let section = section.split("\n## ").next().unwrap();
    let documented: Vec<u8> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next()?.trim().parse().ok())
        .collect();
    for expected in [0, 2, 3, 4, 5, 6, 7] {
        assert!(
            documented.contains(&expected),
            "README documents codes {documented:?}; {expected} is missing"
        );
    }
    let body = errors
        .split("pub fn exit_code(&self) -> i32 {")
        .nth(1)
        .expect("error.rs has Error::exit_code");
    let body = &body[..body.find("\n    }\n").unwrap()];
    let produced: Vec<u8> = body
        .lines()
        .filter_map(|l| l.split("=> ").nth(1))
        .filter_map(|c| c.trim_end_matches(',').trim().parse().ok())
        .collect();
    assert!(!produced.is_empty(), "{body}");
    for code in &documented {
        assert!(
            *code == 0 || produced.contains(code),
            "README documents exit code {code}, error.rs never returns it ({produced:?})"
        );
    }
    for code in &produced {
        assert!(
            documented.contains(code),
            "error.rs returns exit code {code}, README does not document it"
        );
    }
}
