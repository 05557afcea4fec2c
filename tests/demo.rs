//! The embedded quick start: `sluice demo` needs no services, writes the SQLite
//! source, runs the pipeline into a local lake, and its reports match the source.

mod common;

use common::*;

#[test]
fn demo_runs_without_services_and_the_lake_equals_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = sluice(
        &[
            "--quiet",
            "demo",
            "--dir",
            demo.to_str().unwrap(),
            "--scale",
            "0.05",
            "--seed",
            "7",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("100 users, 10 merchants, 2500 transactions"),
        "{stdout}"
    );
    assert!(
        stdout.contains("first run (full load): 2610 rows written"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rerun (nothing changes): 0 rows written"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Transactions per merchant (top 5)"),
        "{stdout}"
    );

    // The lake holds exactly the source rows.
    let db = rusqlite::Connection::open(demo.join("ewallet.sqlite")).unwrap();
    let (count, successful): (i64, f64) = db
        .query_row(
            "SELECT count(*), round(sum(CASE WHEN status = 'SUCCESS' THEN amount ELSE 0 END), 2) FROM transactions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let config = demo.join("sluice.toml");
    let out = sluice(
        &[
            "query",
            "--config",
            config.to_str().unwrap(),
            "--format",
            "csv",
            "SELECT count(*) AS n, round(sum(CASE WHEN status = 'SUCCESS' THEN amount ELSE 0 END), 2) AS s FROM transactions",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("n,s\n{count},{successful}")
    );

    // Same seed, same data: a second demo prints the same reports.
    let again = sluice(
        &[
            "--quiet",
            "demo",
            "--dir",
            demo.to_str().unwrap(),
            "--scale",
            "0.05",
            "--seed",
            "7",
        ],
        &[],
    );
    let reports = |s: &str| {
        s.split("Total successful")
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        reports(&stdout),
        reports(&String::from_utf8_lossy(&again.stdout))
    );
}

#[test]
fn demo_refuses_a_folder_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
    let out = sluice(&["demo", "--dir", dir.path().to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not made by `sluice demo`"));
    assert!(dir.path().join("precious.txt").exists());
}
