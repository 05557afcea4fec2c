//! A lake written before the lake was a Delta Lake (`<table>/_manifest.json`,
//! files under `<column>=YYYY-MM-DD/`) is converted in place by the table's next
//! run: the files stay where they are and become the Delta table's first
//! version, the manifest's watermark carries over (the source is not read
//! again), and the manifest is deleted. Until then `sluice query` reads the old
//! format as it is.
//!
//! The old lake is made as the previous release left it: a run, then its state
//! written back as a format-1 manifest, the partition folders renamed to the old
//! names and the Delta log removed.

mod common;

use std::path::Path;

use common::*;

fn config(lake: &Path, pg_url: &str) -> String {
    format!(
        r#"
[lake]
url = "{lake}"

[sources.app]
kind = "postgres"
url = "{pg_url}"

[[table]]
name = "events"
source = "app"
source_table = "events"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
"#,
        lake = lake.display()
    )
}

fn query(cfg: &Path, sql: &str) -> String {
    let out = sluice(
        &[
            "query",
            "--config",
            cfg.to_str().unwrap(),
            "--format",
            "csv",
            sql,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Turns the Delta table `events` of `lake` into what the previous release
/// wrote: `_manifest.json` (format 1) and `created_at=DAY/` folders.
fn make_legacy(lake: &Path) {
    let table = lake.join("events");
    let mut state = table_state_blocking(lake.to_str().unwrap(), "events");
    state["format_version"] = 1.into();
    for partition in state["partitions"].as_object_mut().unwrap().values_mut() {
        for file in partition["files"].as_array_mut().unwrap() {
            let path = file["path"].as_str().unwrap().to_string();
            file["path"] = path.replacen("created_at_day=", "created_at=", 1).into();
        }
    }
    for entry in std::fs::read_dir(&table).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(day) = name.strip_prefix("created_at_day=") {
            std::fs::rename(entry.path(), table.join(format!("created_at={day}"))).unwrap();
        }
    }
    std::fs::remove_dir_all(table.join("_delta_log")).unwrap();
    std::fs::write(
        table.join("_manifest.json"),
        serde_json::to_vec_pretty(&state).unwrap(),
    )
    .unwrap();
}

/// A PostgreSQL table `events` of `rows` rows (one an hour from 2026-11-20,
/// all updated 2026-11-25), loaded by a run into a local lake that is then
/// turned into the previous release's format.
async fn legacy_lake(
    test: &str,
    rows: u32,
) -> (
    PgDb,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let name = unique(test);
    let pg = PgDb::create(&name).await;
    pg.exec(&format!(
        "CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
                              updated_at timestamptz NOT NULL, note text);
         INSERT INTO events SELECT g, TIMESTAMPTZ '2026-11-20 00:00:00+00' + g * interval '1 hour',
                                   TIMESTAMPTZ '2026-11-25 00:00:00+00', 'v1'
         FROM generate_series(1, {rows}) g;"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let cfg = write_config(&dir, &config(&lake, &pg.url));
    tokio::task::block_in_place(|| sluice_run_ok(&cfg));
    make_legacy(&lake);
    (pg, dir, lake, cfg)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_lake_becomes_a_delta_lake_without_reading_the_source_again() {
    let (pg, _dir, lake, cfg) = legacy_lake("upgrade", 60).await;
    let table = lake.join("events");
    assert!(table.join("_manifest.json").exists());

    // The old format reads as it is, and a query writes nothing.
    let count = "SELECT count(*) AS n, count(DISTINCT created_at_day) AS days FROM events";
    assert_eq!(
        tokio::task::block_in_place(|| query(&cfg, count)),
        "n,days\n60,3\n"
    );
    assert!(
        !table.join("_delta_log").exists(),
        "a query converts nothing"
    );

    // A row that the source has but the lake does not, below the watermark: a
    // run that read the source again would bring it in.
    pg.exec(
        "INSERT INTO events VALUES (999, TIMESTAMPTZ '2026-11-21 12:00:00+00',
                                    TIMESTAMPTZ '2026-11-24 00:00:00+00', 'below the watermark');
         UPDATE events SET note = 'v2', updated_at = TIMESTAMPTZ '2026-11-26 00:00:00+00' WHERE id = 5;
         INSERT INTO events SELECT g, TIMESTAMPTZ '2026-11-20 00:00:00+00' + g * interval '1 hour',
                                   TIMESTAMPTZ '2026-11-26 00:00:00+00', 'new'
         FROM generate_series(61, 70) g;",
    )
    .await;
    tokio::task::block_in_place(|| sluice_run_ok(&cfg));

    assert!(table.join("_delta_log").is_dir(), "converted");
    assert!(
        !table.join("_manifest.json").exists(),
        "the manifest is gone"
    );
    assert_eq!(
        tokio::task::block_in_place(|| query(&cfg, count)),
        "n,days\n70,3\n",
        "the 10 new rows, and not the row below the watermark"
    );
    assert_eq!(
        tokio::task::block_in_place(|| query(
            &cfg,
            "SELECT note FROM events WHERE id IN (5, 999) ORDER BY id"
        )),
        "note\nv2\n"
    );
    // The old files are still where they were, now listed by the Delta log.
    let state = table_state(lake.to_str().unwrap(), "events").await;
    assert_eq!(state["format_version"], 2);
    let paths: Vec<String> = state["partitions"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["files"].as_array().unwrap().clone())
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    assert!(
        paths.iter().any(|p| p.starts_with("created_at=")),
        "an untouched old file stays: {paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.starts_with("created_at_day=")),
        "the rewritten day is in the new layout: {paths:?}"
    );
    // A Delta reader that is not sluice sees the same table.
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            // os._exit: pyarrow's and deltalake's threads can abort the
            // interpreter's teardown on a busy machine, after the answer.
            "import os, sys, deltalake; t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table(); \
             print(t.num_rows, len(set(t.column('id').to_pylist())), flush=True); os._exit(0)",
            table.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "70 70");
    pg.drop().await;
}

/// `sluice state upgrade` converts the same lake without a run, and says so;
/// a second time it has nothing to do.
#[tokio::test(flavor = "multi_thread")]
async fn state_upgrade_converts_without_a_run() {
    let (pg, _dir, lake, cfg) = legacy_lake("upgrade_verb", 30).await;
    let table = lake.join("events");
    let before = table_state(lake.to_str().unwrap(), "events").await;

    let upgrade = || {
        let out = sluice(
            &["state", "upgrade", "--config", cfg.to_str().unwrap()],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        tokio::task::block_in_place(upgrade),
        "converted to Delta: events\n"
    );
    assert!(table.join("_delta_log").is_dir());
    assert!(!table.join("_manifest.json").exists());
    let after = table_state(lake.to_str().unwrap(), "events").await;
    assert_eq!(
        after["watermark"], before["watermark"],
        "the position carries over"
    );
    assert_eq!(after["partitions"], before["partitions"], "the same files");
    assert_eq!(
        tokio::task::block_in_place(|| query(&cfg, "SELECT count(*) AS n FROM events")),
        "n\n30\n"
    );
    assert_eq!(
        tokio::task::block_in_place(upgrade),
        "every lake table is a Delta table already\n"
    );
    pg.drop().await;
}
