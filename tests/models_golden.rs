//! Golden tests of the example SQL models: each project in `sql/` runs over the
//! small fixed lake tables of its `fixtures/` folder (written as Parquet lake
//! tables), and every model's rows must equal its `<model>.expected` file.
//!
//! `SLUICE_BLESS=1 cargo test --test models_golden` rewrites the expected files.

use std::path::Path;

use sluice::config::Config;
use sluice::lake::Lake;
use sluice::query::{query, OutputFormat, QueryOptions};
use sluice::transform::{ModelStatus, ModelsOptions};

mod models_support;
use models_support::{root, write_fixtures};

/// The config of `example` with its lake in `lake_dir`, no ClickHouse, and the
/// models of `sql/<project>`.
fn example_config(example: &str, project: &str, lake_dir: &Path) -> Config {
    let text = std::fs::read_to_string(root().join("examples").join(example)).unwrap();
    let mut config = Config::from_toml(&text, &|_| Some("unused".into())).unwrap();
    config.lake.url = lake_dir.to_str().unwrap().to_string();
    config.clickhouse = None;
    let models = config.models.as_mut().expect("the example has [models]");
    models.path = root()
        .join("sql")
        .join(project)
        .to_str()
        .unwrap()
        .to_string();
    models.clickhouse = None;
    config
}

/// Every row of `table`, sorted by every column, as a pretty table.
async fn rows(config: &Config, base: &Path, lake: &Lake, table: &str) -> String {
    // The model's own columns (not the `<partition column>_day` the lake adds).
    let columns: Vec<String> = lake
        .read_manifest(table)
        .await
        .unwrap()
        .unwrap()
        .schema
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    let order = columns.join(", ");
    let mut out = Vec::new();
    query(
        config,
        base,
        &format!("SELECT {order} FROM {table} ORDER BY {order}"),
        &QueryOptions {
            format: OutputFormat::Table,
            output: None,
        },
        &mut out,
    )
    .await
    .unwrap();
    String::from_utf8(out).unwrap()
}

/// Runs the models of `sql/<project>` over its fixtures with the settings of
/// `examples/<example>`; returns the reports.
async fn golden(example: &str, project: &str) -> Vec<sluice::transform::ModelReport> {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    let config = example_config(example, project, &lake_dir);
    let base = dir.path();
    let lake = Lake::open(&config.lake, base).unwrap();
    let project_dir = root().join("sql").join(project);
    write_fixtures(&lake, &project_dir).await;

    let reports = sluice::transform::run_models(&config, base, &ModelsOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut mismatches = Vec::new();
    for report in &reports {
        assert_eq!(report.status, ModelStatus::Published, "{report:?}");
        assert!(report.checks.iter().all(|c| c.passed()), "{report:?}");
        let got = rows(&config, base, &lake, &report.model).await;
        let expected_path = project_dir.join(format!("{}.expected", report.model));
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            mismatches.push(format!(
                "{} differs from {}:\n--- got\n{got}--- expected\n{expected}",
                report.model,
                expected_path.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    reports
}

#[tokio::test]
async fn ewallet_models_match_golden_files() {
    golden("ewallet.toml", "ewallet").await;
}

#[tokio::test]
async fn fintech_models_match_golden_files() {
    let reports = golden("fintech.toml", "fintech").await;
    let rows = |model: &str| {
        let r = reports.iter().find(|r| r.model == model).unwrap();
        (r.rows, r.rows_dropped)
    };
    // The users' current state: of 4 keys in the change table, 1 was deleted.
    assert_eq!(rows("stg_users"), (3, 0));
    // Validate before write, counted: the plan of the deleted user; the
    // transactions of an unknown user, of the deleted user and of a soft-deleted
    // plan.
    assert_eq!(rows("stg_savings_plan"), (3, 1));
    assert_eq!(rows("stg_savings_transaction"), (5, 3));
}

/// examples/fintech.toml runs the models of examples/fintech_sources.toml on their
/// own: the two `[models]` sections must not drift apart.
#[test]
fn fintech_examples_share_their_models_section() {
    let models = |example: &str| {
        let text = std::fs::read_to_string(root().join("examples").join(example)).unwrap();
        let config = Config::from_toml(&text, &|_| Some("unused".into())).unwrap();
        format!("{:?}", config.models.expect("the example has [models]"))
    };
    assert_eq!(models("fintech.toml"), models("fintech_sources.toml"));
}
