//! Helpers of the SQL model tests: fixture lake tables and small configs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use datafusion::prelude::SessionContext;
use sluice::lake::Lake;
use sluice::transform::write_table;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `-- sluice: name = value` header lines of a fixture.
fn header(sql: &str, name: &str) -> Option<String> {
    sql.lines()
        .filter_map(|l| l.trim().strip_prefix("-- sluice:"))
        .filter_map(|s| s.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_string())
}

/// Writes every `fixtures/<table>.sql` of `project` as the lake table `<table>`.
pub async fn write_fixtures(lake: &Lake, project: &Path) {
    let mut fixtures: Vec<_> = std::fs::read_dir(project.join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    fixtures.sort();
    let ctx = SessionContext::new();
    for path in fixtures {
        let sql = std::fs::read_to_string(&path).unwrap();
        let name = path.file_stem().unwrap().to_str().unwrap();
        let batches = ctx
            .sql(&sql)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .collect()
            .await
            .unwrap();
        let key: Vec<String> = header(&sql, "key")
            .map(|k| k.split(',').map(|c| c.trim().to_string()).collect())
            .unwrap_or_default();
        write_table(
            lake,
            name,
            header(&sql, "partition_by").as_deref(),
            &key,
            batches,
        )
        .await
        .unwrap();
    }
}

/// Writes one lake table from a `SELECT` (a fixture written inline in a test).
pub async fn write_sql_table(lake: &Lake, name: &str, partition_by: Option<&str>, sql: &str) {
    let batches = SessionContext::new()
        .sql(sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    write_table(lake, name, partition_by, &[], batches)
        .await
        .unwrap();
}

/// A config with a local lake under `dir`, no sources, and `models` as its
/// `[models]` section body (after `path`).
pub fn local_config(dir: &Path, models_dir: &Path, models: &str) -> sluice::Config {
    let text = format!(
        "[lake]\nurl = {lake:?}\n\n[sources]\n\n[models]\npath = {path:?}\n{models}\n",
        lake = dir.join("lake").to_str().unwrap(),
        path = models_dir.to_str().unwrap(),
    );
    sluice::Config::from_toml(&text, &|_| None).unwrap()
}

/// Copies the models of `sql/<project>` into `to`.
pub fn copy_models(project: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(root().join("sql").join(project)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sql") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}
