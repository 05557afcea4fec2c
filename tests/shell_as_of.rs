//! `sluice query --as-of DAY` on snapshot and change tables, and `sluice shell`
//! through a pipe. The lake is written here directly (manifests and Parquet files
//! as the snapshot capture lays them out), so no MongoDB is needed.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Int64Array, StringArray, UInt64Array, UInt8Array};
use arrow::record_batch::RecordBatch;
use common::*;
use sluice::lake::manifest::{FileEntry, Manifest, PartitionEntry};
use sluice::lake::writer::{parse_day, writer_properties};

const CONFIG: &str = r#"
[lake]
url = "lake"

[sources.app]
kind = "mongodb"
url = "mongodb://127.0.0.1:1/app"

[[table]]
name = "users"
source = "app"
collection = "users"
mode = "snapshot"

[[table]]
name = "accounts"
source = "app"
collection = "accounts"
mode = "snapshot_diff"
"#;

/// Writes one partition file of `table` and records it in `manifest`.
fn write_day(lake: &Path, manifest: &mut Manifest, day: &str, batch: RecordBatch) {
    let rel = format!(
        "{}={day}/part-test-00000.parquet",
        manifest.partition_column
    );
    let path = lake.join(&manifest.table).join(&rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(writer_properties(1000)))
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    manifest.set_schema(&batch.schema());
    manifest.partitions.insert(
        day.to_string(),
        PartitionEntry {
            rows: batch.num_rows() as u64,
            files: vec![FileEntry {
                path: rel,
                rows: batch.num_rows() as u64,
                bytes: std::fs::metadata(&path).unwrap().len(),
            }],
            key_print: None,
        },
    );
}

fn commit(lake: &Path, mut manifest: Manifest) {
    manifest.version = 1;
    manifest.run_id = "test".into();
    manifest.committed_at = "2026-11-25T00:00:00Z".into();
    let path = lake.join(&manifest.table).join("_manifest.json");
    std::fs::write(path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

/// `users`: snapshots on 11-20 (a, b) and 11-22 (a, b, c).
/// `accounts`: changes on 11-20 (insert a, b), 11-21 (update a, delete b,
/// insert c), 11-23 (update c, re-insert b).
fn build_lake(dir: &Path) {
    let lake = dir.join("lake");
    let users = |ids: &[&str], day: &str| {
        let n = ids.len();
        let day = parse_day(day).unwrap();
        RecordBatch::try_from_iter([
            ("_id", Arc::new(StringArray::from(ids.to_vec())) as ArrayRef),
            (
                "snapshot_date",
                Arc::new(Date32Array::from(vec![day; n])) as ArrayRef,
            ),
        ])
        .unwrap()
    };
    let mut manifest = Manifest::new("users", "snapshot_date", &["_id".to_string()]);
    write_day(
        &lake,
        &mut manifest,
        "2026-11-20",
        users(&["a", "b"], "2026-11-20"),
    );
    write_day(
        &lake,
        &mut manifest,
        "2026-11-22",
        users(&["a", "b", "c"], "2026-11-22"),
    );
    commit(&lake, manifest);

    let changes = |rows: &[(&str, i64, &str)], day: &str| {
        let n = rows.len();
        let version: u64 = day.replace('-', "").parse().unwrap();
        RecordBatch::try_from_iter([
            (
                "_id",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            ),
            (
                "balance",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef,
            ),
            (
                "_op",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))) as ArrayRef,
            ),
            (
                "_change_date",
                Arc::new(Date32Array::from(vec![parse_day(day).unwrap(); n])) as ArrayRef,
            ),
            (
                "_version",
                Arc::new(UInt64Array::from(vec![version; n])) as ArrayRef,
            ),
            (
                "_is_deleted",
                Arc::new(UInt8Array::from_iter_values(
                    rows.iter().map(|r| u8::from(r.2 == "delete")),
                )) as ArrayRef,
            ),
        ])
        .unwrap()
    };
    let mut manifest = Manifest::new("accounts", "_change_date", &["_id".to_string()]);
    write_day(
        &lake,
        &mut manifest,
        "2026-11-20",
        changes(&[("a", 10, "insert"), ("b", 20, "insert")], "2026-11-20"),
    );
    write_day(
        &lake,
        &mut manifest,
        "2026-11-21",
        changes(
            &[
                ("a", 11, "update"),
                ("b", 20, "delete"),
                ("c", 30, "insert"),
            ],
            "2026-11-21",
        ),
    );
    write_day(
        &lake,
        &mut manifest,
        "2026-11-23",
        changes(&[("b", 22, "insert"), ("c", 33, "update")], "2026-11-23"),
    );
    commit(&lake, manifest);
}

fn query(dir: &Path, args: &[&str], sql: &str) -> String {
    let cfg = dir.join("sluice.toml");
    let mut all = vec![
        "query",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "csv",
    ];
    all.extend_from_slice(args);
    all.push(sql);
    let out = sluice(&all, &[]);
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_config(&dir, CONFIG);
    build_lake(dir.path());
    dir
}

#[test]
fn as_of_reads_snapshots_and_change_tables_on_a_day() {
    let dir = setup();
    let d = dir.path();
    let users = "SELECT _id, snapshot_date FROM users ORDER BY _id";
    let accounts = "SELECT _id, balance, _op FROM accounts ORDER BY _id";

    // Without --as-of: every snapshot, every change.
    assert_eq!(query(d, &[], "SELECT count(*) AS n FROM users"), "n\n5\n");
    assert_eq!(
        query(d, &[], "SELECT count(*) AS n FROM accounts"),
        "n\n7\n"
    );

    // Before the first snapshot: empty.
    assert_eq!(
        query(d, &["--as-of", "2026-11-19"], users),
        "_id,snapshot_date\n"
    );
    assert_eq!(
        query(d, &["--as-of", "2026-11-19"], accounts),
        "_id,balance,_op\n"
    );
    // On a snapshot day, and between snapshots: the last one by then.
    let first = "_id,snapshot_date\na,2026-11-20\nb,2026-11-20\n";
    assert_eq!(query(d, &["--as-of", "2026-11-20"], users), first);
    assert_eq!(query(d, &["--as-of", "2026-11-21"], users), first);
    let second = "_id,snapshot_date\na,2026-11-22\nb,2026-11-22\nc,2026-11-22\n";
    assert_eq!(query(d, &["--as-of", "2026-11-22"], users), second);
    assert_eq!(query(d, &["--as-of", "2030-01-01"], users), second);

    // Change tables: the latest change per key by then, deletes hidden.
    assert_eq!(
        query(d, &["--as-of", "2026-11-20"], accounts),
        "_id,balance,_op\na,10,insert\nb,20,insert\n"
    );
    assert_eq!(
        query(d, &["--as-of", "2026-11-22"], accounts),
        "_id,balance,_op\na,11,update\nc,30,insert\n"
    );
    assert_eq!(
        query(d, &["--as-of", "2026-11-23"], accounts),
        "_id,balance,_op\na,11,update\nb,22,insert\nc,33,update\n"
    );
    // ... and their change rows up to that day.
    assert_eq!(
        query(
            d,
            &["--as-of", "2026-11-21"],
            "SELECT _id, _op, _change_date FROM accounts_changes ORDER BY _change_date, _id"
        ),
        "_id,_op,_change_date\na,insert,2026-11-20\nb,insert,2026-11-20\n\
         a,update,2026-11-21\nb,delete,2026-11-21\nc,insert,2026-11-21\n"
    );

    // A bad day is a usage error.
    let cfg = d.join("sluice.toml");
    let out = sluice(
        &[
            "query",
            "--config",
            cfg.to_str().unwrap(),
            "--as-of",
            "2026-13-01",
            "SELECT 1",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
}

/// Runs `sluice shell` with `input` on a pipe; returns (exit code, stdout, stderr).
fn shell(dir: &Path, args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let cfg = dir.join("sluice.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["shell", "--config", cfg.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn shell_through_a_pipe() {
    let dir = setup();
    let d = dir.path();
    let (code, out, err) = shell(
        d,
        &[],
        "\\d\n\\d accounts\nSELECT _id,\n  balance\nFROM accounts\nWHERE _op = 'insert;'; SELECT count(*) AS n\n FROM users;\n\\timing\nSELECT 1 AS one;\n\\s\n\\q\nSELECT 'not run';\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err, "");
    // \d: the tables.
    assert!(out.contains("| accounts | BASE TABLE |"), "{out}");
    assert!(out.contains("| users    | BASE TABLE |"), "{out}");
    // \d accounts: its columns.
    let column = |name: &str, kind: &str| {
        out.lines()
            .any(|l| l.starts_with(&format!("| {name} ")) && l.contains(&format!("| {kind} ")))
    };
    assert!(column("balance", "Int64"), "{out}");
    assert!(column("_is_deleted", "UInt8"), "{out}");
    // A statement over several lines with a quoted `;`, and two on one line.
    assert!(out.contains("\n0 rows in "), "{out}");
    assert!(out.contains("| 5 |\n+---+\n1 row in "), "{out}");
    // \timing turned off: no time after SELECT 1.
    assert!(
        out.contains("| one |\n+-----+\n| 1   |\n+-----+\n"),
        "{out}"
    );
    assert!(!out.contains("+-----+\n1 row in"), "{out}");
    // \s: the history; \q: nothing after it runs.
    assert!(
        out.contains("SELECT count(*) AS n\n FROM users\nSELECT 1 AS one\n"),
        "{out}"
    );
    assert!(!out.contains("not run"), "{out}");

    // Errors are printed and the shell goes on; from a pipe it then exits with the
    // query error code. The snapshot table as of a day.
    let (code, out, err) = shell(
        d,
        &["--as-of", "2026-11-21"],
        "SELEC 1;\nSELECT count(*) AS n FROM users;\nSELECT * FROM nowhere",
    );
    assert_eq!(code, Some(6), "{out}{err}");
    assert!(err.contains("SQL error: ParserError"), "{err}");
    assert!(err.contains("nowhere' not found"), "{err}");
    assert!(err.contains("2 statement(s) failed"), "{err}");
    assert!(out.contains("| 2 |"), "{out}");
}
