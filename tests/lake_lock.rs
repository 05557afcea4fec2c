//! The table lock against real processes: a holder that is a zombie, or whose
//! process id now belongs to another process, is stale; a live holder is not.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice::config::LakeConfig;
use sluice::lake::lock::{TableLock, LOCK_FILE};
use sluice::lake::Lake;
use sluice::Error;

fn local_lake(dir: &Path) -> Lake {
    let config = LakeConfig {
        url: dir.join("lake").display().to_string(),
        target_file_bytes: 1 << 20,
        row_group_rows: 1024,
        keep_versions_days: 7,
    };
    Lake::open(&config, dir).unwrap()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The state letter of `/proc/<pid>/stat` (after the last `)` of the name).
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Writes the lock of `table` as another run on this host would, holding it for
/// ten more minutes; `extra` adds fields (`, "start_time": 1`).
fn write_lock(dir: &Path, table: &str, pid: u32, extra: &str) {
    let folder = dir.join("lake").join(table);
    std::fs::create_dir_all(&folder).unwrap();
    let now = chrono::Utc::now();
    let text = format!(
        r#"{{"host":{host:?},"pid":{pid},"run_id":"20261207T000000000Z-holder","token":"holder","acquired_at":"{now}","expires_at":"{expires}"{extra}}}"#,
        host = host_name(),
        now = now.to_rfc3339(),
        expires = (now + chrono::TimeDelta::minutes(10)).to_rfc3339(),
    );
    std::fs::write(folder.join(LOCK_FILE), text).unwrap();
}

#[tokio::test]
async fn zombie_holder_is_taken_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(dir.path());
    // A child that exits and is not waited for stays a zombie until reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(pid) != Some('Z') {
        assert!(
            Instant::now() < deadline,
            "child {pid} never became a zombie"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    write_lock(dir.path(), "orders", pid, "");
    let lock = TableLock::acquire(&lake, "orders", "taker").await;
    child.wait().unwrap();
    let lock = lock.expect("a zombie holds no lock");
    let held = std::fs::read_to_string(dir.path().join("lake/orders").join(LOCK_FILE)).unwrap();
    assert!(held.contains("\"run_id\":\"taker\""), "{held}");
    lock.release().await.unwrap();
}

#[tokio::test]
async fn live_holder_keeps_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(dir.path());
    write_lock(dir.path(), "orders", std::process::id(), "");
    match TableLock::acquire(&lake, "orders", "taker").await {
        Err(Error::AlreadyRunning { table, holder }) => {
            assert_eq!(table, "orders");
            assert!(holder.contains("20261207T000000000Z-holder"), "{holder}");
        }
        Err(e) => panic!("expected AlreadyRunning, got {e}"),
        Ok(_) => panic!("a live holder's lock was taken"),
    }
}

#[tokio::test]
async fn reused_process_id_is_not_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let lake = local_lake(dir.path());
    // This process is alive, but did not start at tick 1 after boot: the holder
    // that did has exited and its id was given to this process.
    write_lock(
        dir.path(),
        "orders",
        std::process::id(),
        r#","start_time":1"#,
    );
    let lock = TableLock::acquire(&lake, "orders", "taker")
        .await
        .expect("a reused process id holds no lock");
    // The new lock records this process's start time: a second taker is refused.
    let again = TableLock::acquire(&lake, "orders", "second").await;
    assert!(
        matches!(again, Err(Error::AlreadyRunning { .. })),
        "a lock with a matching start time is held"
    );
    lock.release().await.unwrap();
}
