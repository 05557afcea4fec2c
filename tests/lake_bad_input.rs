//! A lake folder that is not what sluice expects stops the table with an error
//! naming it, and nothing is written: a Delta table another tool wrote, a log
//! that needs a newer reader, a log with a version missing.

mod common;

use common::*;
use sluice::lake::manifest::{FileEntry, Manifest, PartitionEntry};

fn state(version: u64) -> Manifest {
    let mut m = Manifest::new("t", "day", &["id".to_string()]);
    m.version = version;
    m.run_id = format!("run{version}");
    m
}

fn log_versions(table: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_table_sluice_did_not_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import os, sys, pyarrow as pa, deltalake; \
             deltalake.write_deltalake(sys.argv[1], pa.table({'x': [1, 2]})); os._exit(0)",
            table.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = log_versions(&table);

    let lake = open_lake(dir.path().to_str().unwrap());
    let err = lake.read_manifest("t").await.unwrap_err().to_string();
    assert!(
        err.contains("table t") && err.contains("sluice did not write"),
        "{err}"
    );
    assert_eq!(log_versions(&table), before, "nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_needs_a_newer_reader_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lake = open_lake(dir.path().to_str().unwrap());
    assert!(lake.read_manifest("t").await.unwrap().is_none());
    lake.write_manifest(&state(1)).await.unwrap();
    // Another writer upgrades the table to a feature no reader here knows.
    std::fs::write(
        dir.path().join("t/_delta_log/00000000000000000001.json"),
        r#"{"protocol":{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["aFeatureFromTheFuture"],"writerFeatures":["aFeatureFromTheFuture"]}}
{"commitInfo":{"timestamp":1}}
"#,
    )
    .unwrap();
    let err = lake.read_manifest("t").await.unwrap_err().to_string();
    assert!(err.contains("table t"), "{err}");
    assert!(err.contains("aFeatureFromTheFuture"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_log_version_is_an_error_not_an_older_table() {
    let dir = tempfile::tempdir().unwrap();
    let lake = open_lake(dir.path().to_str().unwrap());
    assert!(lake.read_manifest("t").await.unwrap().is_none());
    for version in 1..=3 {
        let mut m = state(version);
        m.partitions.insert(
            "2026-11-24".into(),
            PartitionEntry {
                rows: 1,
                files: vec![FileEntry {
                    path: format!("day_day=2026-11-24/part-{version}.parquet"),
                    rows: 1,
                    bytes: 10,
                }],
                key_print: None,
            },
        );
        lake.write_manifest(&m).await.unwrap();
    }
    std::fs::remove_file(dir.path().join("t/_delta_log/00000000000000000001.json")).unwrap();
    let err = lake.read_manifest("t").await.unwrap_err().to_string();
    assert!(err.contains("table t"), "{err}");
    let before = log_versions(&dir.path().join("t"));
    // A writer that read nothing cannot commit over it either.
    let fresh = open_lake(dir.path().to_str().unwrap());
    assert!(fresh.read_manifest("t").await.is_err());
    assert!(fresh.write_manifest(&state(4)).await.is_err());
    assert_eq!(
        log_versions(&dir.path().join("t")),
        before,
        "nothing written"
    );
}
