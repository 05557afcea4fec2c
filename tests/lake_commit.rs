//! A lake commit cannot clobber: a commit creates the next version of the
//! table's Delta log only if no other writer created it since the version it
//! read. A writer whose table lock was bypassed (here: the library, which takes
//! no lock) and that read the table before another run committed gets
//! `Error::CommitConflict` (exit code 7), and the table stays the other run's.
//! Checked on a local-folder lake (no-replace rename) and on S3
//! (`If-None-Match: *`), and against a real `sluice run`.

mod common;

use common::*;
use sluice::lake::manifest::Manifest;
use sluice::lake::Lake;

fn local_lake(dir: &std::path::Path) -> Lake {
    open_lake(dir.to_str().unwrap())
}

fn s3_lake(prefix: &str) -> Lake {
    open_lake(&format!("s3://{}/{prefix}", s3_bucket()))
}

fn manifest(table: &str, version: u64, run: &str) -> Manifest {
    let mut m = Manifest::new(table, "day", &["id".to_string()]);
    m.version = version;
    m.run_id = run.into();
    m
}

/// Two writers (two handles, as two processes) read the same version; the first
/// commit wins, the second is refused and changes nothing; read again, the
/// second writer commits.
async fn two_writers(a: Lake, b: Lake) {
    // Both see no table: only one may create it.
    assert!(a.read_manifest("t").await.unwrap().is_none());
    assert!(b.read_manifest("t").await.unwrap().is_none());
    a.write_manifest(&manifest("t", 1, "a")).await.unwrap();
    let err = b.write_manifest(&manifest("t", 1, "b")).await.unwrap_err();
    assert!(matches!(err, sluice::Error::CommitConflict { .. }), "{err}");
    assert_eq!(err.exit_code(), 7);
    assert!(
        err.to_string().contains("it is now version 1 of run a"),
        "{err}"
    );

    // Both read version 1; a commits 2; b's 2 is refused.
    assert_eq!(b.read_manifest("t").await.unwrap().unwrap().run_id, "a");
    a.write_manifest(&manifest("t", 2, "a")).await.unwrap();
    let err = b.write_manifest(&manifest("t", 2, "b")).await.unwrap_err();
    assert!(matches!(err, sluice::Error::CommitConflict { .. }), "{err}");
    let now = a.read_manifest("t").await.unwrap().unwrap();
    assert_eq!((now.version, now.run_id.as_str()), (2, "a"));

    // A writer's own commit is the version its next commit replaces.
    a.write_manifest(&manifest("t", 3, "a")).await.unwrap();
    a.write_manifest(&manifest("t", 4, "a")).await.unwrap();
    // b reads again and commits.
    assert_eq!(b.read_manifest("t").await.unwrap().unwrap().version, 4);
    b.write_manifest(&manifest("t", 5, "b")).await.unwrap();
    let err = a.write_manifest(&manifest("t", 5, "a")).await.unwrap_err();
    assert!(matches!(err, sluice::Error::CommitConflict { .. }), "{err}");
    assert_eq!(a.read_manifest("t").await.unwrap().unwrap().run_id, "b");
}

/// A commit sent again after its answer was lost (the same version, run and
/// commit time) finds itself in the log by its `txn` and is not a conflict;
/// the log has it once.
#[tokio::test]
async fn a_commit_retried_after_it_landed_is_done_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a, retry) = (local_lake(dir.path()), local_lake(dir.path()));
    assert!(a.read_manifest("t").await.unwrap().is_none());
    assert!(retry.read_manifest("t").await.unwrap().is_none());
    let mut m = manifest("t", 1, "a");
    m.committed_at = "2026-12-08T00:00:00Z".into();
    a.write_manifest(&m).await.unwrap();
    retry.write_manifest(&m).await.unwrap();
    let versions = std::fs::read_dir(dir.path().join("t/_delta_log"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(versions, 1);
    // Another run's commit of the same version is still refused.
    let other = local_lake(dir.path());
    assert!(other.read_manifest("t").await.unwrap().is_some());
    a.write_manifest(&manifest("t", 2, "a")).await.unwrap();
    let err = other
        .write_manifest(&manifest("t", 2, "b"))
        .await
        .unwrap_err();
    assert!(matches!(err, sluice::Error::CommitConflict { .. }), "{err}");
}

#[tokio::test]
async fn local_folder_commits_are_conditional() {
    let dir = tempfile::tempdir().unwrap();
    two_writers(local_lake(dir.path()), local_lake(dir.path())).await;
}

#[tokio::test]
async fn s3_commits_are_conditional() {
    let prefix = unique("commit_s3");
    two_writers(s3_lake(&prefix), s3_lake(&prefix)).await;
}

/// A writer that read the table, then a real `sluice run` commits, then the
/// writer commits: refused; the lake and ClickHouse stay the run's.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_writer_cannot_undo_a_run() {
    let name = unique("commit_run");
    let pg = PgDb::create(&name).await;
    pg.exec(
        "CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
                              updated_at timestamptz NOT NULL);
         INSERT INTO events SELECT g, now() - (g % 3) * interval '1 day', now() FROM generate_series(1, 100) g;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!(
            r#"
[lake]
url = "s3://{bucket}/{name}"

[sources.app]
kind = "postgres"
url = "{pg}"

[clickhouse]
url = "{ch}"
database = "{name}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "events"
source = "app"
source_table = "events"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
"#,
            bucket = s3_bucket(),
            pg = pg.url,
            ch = clickhouse_url(),
            ch_s3 = clickhouse_s3_endpoint(),
        ),
    );
    sluice_run_ok(&config);
    let lake = s3_lake(&name);
    let mut stale = lake.read_manifest("events").await.unwrap().unwrap();
    pg.exec("INSERT INTO events SELECT g, now(), now() + interval '1 minute' FROM generate_series(101, 150) g")
        .await;
    sluice_run_ok(&config);
    let after_run = s3_table_state(&name, "events").await;
    stale.version += 1;
    stale.partitions.clear();
    let err = lake.write_manifest(&stale).await.unwrap_err();
    assert!(matches!(err, sluice::Error::CommitConflict { .. }), "{err}");
    let now = s3_table_state(&name, "events").await;
    assert_eq!(now["version"], after_run["version"]);
    assert_eq!(now, after_run, "the run's commit stays");
    let rows = ch_lines(&format!("SELECT count() FROM `{name}`.events")).await;
    assert_eq!(rows, vec!["150"]);
    // The staging twins live in a database of their own, dropped after the load.
    let stages = ch_lines(&format!(
        "SELECT count() FROM system.tables WHERE database IN ('{name}', '{name}_sluice') AND name != 'events'"
    ))
    .await;
    assert_eq!(stages, vec!["0"], "no staging table is left behind");
    ch_exec(&format!("DROP DATABASE IF EXISTS `{name}`")).await;
    ch_exec(&format!("DROP DATABASE IF EXISTS `{name}_sluice`")).await;
    pg.drop().await;
}
