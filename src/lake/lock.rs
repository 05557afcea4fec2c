//! One writer per table: a lock object in the lake, `<table>/_lock.json`.
//!
//! The lock names its holder (host, process id, run id) and expires: the holder
//! refreshes it every minute, and a lock not refreshed for [`LOCK_TTL`] is taken
//! over. On the same host a lock whose holder is gone is taken over at once, so a
//! run killed with `kill -9` does not block the next one. Gone means: no such
//! process, a zombie (killed but not yet reaped, which in a container whose PID 1
//! does not reap lasts until the lock expires), or a process that started at
//! another time than the holder (its process id reused since).
//!
//! The lock is created with a conditional PUT (`If-None-Match: *`); on a store that
//! ignores the condition, the read-before-write and read-after-write checks still
//! catch all but a simultaneous start within the same few milliseconds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::Lake;
use crate::error::{Error, Result};

/// How long a lock lives without a refresh.
pub const LOCK_TTL: Duration = Duration::from_secs(10 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Name of the lock object inside a table folder.
pub const LOCK_FILE: &str = "_lock.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LockFile {
    host: String,
    pid: u32,
    run_id: String,
    token: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// The holder's start time (`starttime` of `/proc/<pid>/stat`, clock ticks
    /// since boot), so that another process given the same id is not taken for
    /// the holder. Absent in locks written before sluice recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_time: Option<u64>,
}

impl LockFile {
    fn describe(&self) -> String {
        format!(
            "run {} (process {} on {}, lock expires {})",
            self.run_id,
            self.pid,
            self.host,
            self.expires_at.format("%Y-%m-%d %H:%M:%SZ")
        )
    }

    /// Whether the holder is gone: the lock expired, or its process on this host
    /// no longer exists, is a zombie, or is another process with the same id.
    fn is_stale(&self, host: &str) -> bool {
        if self.expires_at < Utc::now() {
            return true;
        }
        if self.host != host {
            return false;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return !std::path::Path::new(&format!("/proc/{}", self.pid)).exists();
        };
        match ProcStat::parse(&text) {
            Some(stat) => stat.is_dead() || self.start_time.is_some_and(|t| t != stat.start_time),
            // A process that exists but whose stat we cannot read holds its lock.
            None => false,
        }
    }
}

/// What `/proc/<pid>/stat` tells about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// `R`, `S`, `D`, `T`, `Z` (zombie), `X` (dead)…
    state: char,
    /// Clock ticks after boot at which the process started.
    start_time: u64,
}

impl ProcStat {
    /// Parses `pid (comm) state ppid …`. The command name may hold spaces and
    /// parentheses, so the fields are counted from the last `)`.
    fn parse(text: &str) -> Option<Self> {
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        // Field 3 is the state; field 22 (`starttime`) comes 19 fields later.
        let start_time = fields.nth(18)?.parse().ok()?;
        Some(Self { state, start_time })
    }

    fn of(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// A zombie has exited and holds nothing; it only waits for its parent.
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// A held table lock; released by [`TableLock::release`], or taken over once stale.
pub struct TableLock {
    store: Arc<dyn ObjectStore>,
    path: Path,
    token: String,
    refresher: tokio::task::JoinHandle<()>,
}

fn ttl() -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(LOCK_TTL).expect("lock TTL fits")
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

impl TableLock {
    /// Takes the lock of `table`, or fails with [`Error::AlreadyRunning`].
    pub async fn acquire(lake: &Lake, table: &str, run_id: &str) -> Result<Self> {
        let store = Arc::clone(lake.store());
        let path = lake.table_path(table).join(LOCK_FILE);
        let host = host_name();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let start_time = ProcStat::of(std::process::id()).map(|s| s.start_time);
        let fresh = |now: DateTime<Utc>| LockFile {
            host: host.clone(),
            pid: std::process::id(),
            run_id: run_id.to_string(),
            token: token.clone(),
            acquired_at: now,
            expires_at: now + ttl(),
            start_time,
        };
        for _ in 0..3 {
            if let Some(current) = read(&store, &path).await? {
                if !current.is_stale(&host) {
                    return Err(Error::AlreadyRunning {
                        table: table.to_string(),
                        holder: current.describe(),
                    });
                }
                warn!(table, holder = %current.describe(), "Taking over a stale lock.");
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::lake(format!("removing stale lock {path}: {e}"))),
                }
            }
            let body = serde_json::to_vec(&fresh(Utc::now())).expect("lock serialises");
            let created = store
                .put_opts(
                    &path,
                    PutPayload::from(body),
                    PutOptions::from(PutMode::Create),
                )
                .await;
            match created {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => {
                    let body = serde_json::to_vec(&fresh(Utc::now())).expect("lock serialises");
                    store.put(&path, PutPayload::from(body)).await?;
                }
                Err(e) => return Err(Error::lake(format!("creating lock {path}: {e}"))),
            }
            // Read back: on a store that ignored the condition, the last writer wins.
            match read(&store, &path).await? {
                Some(held) if held.token == token => {
                    let refresher =
                        tokio::spawn(refresh(Arc::clone(&store), path.clone(), fresh(Utc::now())));
                    return Ok(Self {
                        store,
                        path,
                        token,
                        refresher,
                    });
                }
                _ => continue,
            }
        }
        Err(Error::lake(format!(
            "could not take the lock {path} after 3 attempts"
        )))
    }

    /// Releases the lock if it is still ours.
    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        if let Some(current) = read(&self.store, &self.path).await? {
            if current.token == self.token {
                match self.store.delete(&self.path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(Error::lake(format!("releasing lock {}: {e}", self.path)))
                    }
                }
            }
        }
        Ok(())
    }
}

async fn read(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Option<LockFile>> {
    match store.get(path).await {
        Ok(found) => {
            let bytes = found.bytes().await?;
            // An unreadable lock (a torn write from another tool) counts as expired.
            Ok(Some(serde_json::from_slice(&bytes).unwrap_or(LockFile {
                host: String::new(),
                pid: 0,
                run_id: "unknown".into(),
                token: String::new(),
                acquired_at: DateTime::<Utc>::MIN_UTC,
                expires_at: DateTime::<Utc>::MIN_UTC,
                start_time: None,
            })))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::lake(format!("reading lock {path}: {e}"))),
    }
}

async fn refresh(store: Arc<dyn ObjectStore>, path: Path, mut lock: LockFile) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        lock.expires_at = Utc::now() + ttl();
        let body = serde_json::to_vec(&lock).expect("lock serialises");
        if let Err(e) = store.put(&path, PutPayload::from(body)).await {
            warn!(error = %e, "Could not refresh the table lock.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line with every field up to `starttime` (22) and a few after.
    fn stat_line(comm: &str, state: char, start_time: u64) -> String {
        format!("4242 ({comm}) {state} 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start_time} 1000 200 18446744073709551615")
    }

    #[test]
    fn stat_parses_state_and_start_time() {
        let stat = ProcStat::parse(&stat_line("sluice", 'S', 123456)).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                start_time: 123456
            }
        );
        assert!(!stat.is_dead());
    }

    #[test]
    fn stat_counts_fields_from_the_last_parenthesis() {
        for comm in ["a b", "x) Z (y", "((", ") R 1 2 3", "sluice run"] {
            let stat = ProcStat::parse(&stat_line(comm, 'Z', 77)).unwrap();
            assert_eq!(stat.state, 'Z', "{comm}");
            assert_eq!(stat.start_time, 77, "{comm}");
            assert!(stat.is_dead(), "{comm}");
        }
    }

    #[test]
    fn stat_that_is_cut_short_does_not_parse() {
        assert_eq!(ProcStat::parse("12 (sh) S 1 2 3"), None);
        assert_eq!(ProcStat::parse("12 sh S"), None);
        assert_eq!(ProcStat::parse(""), None);
    }

    #[test]
    fn own_process_is_alive_and_has_a_start_time() {
        let own = ProcStat::of(std::process::id()).expect("/proc/self/stat");
        assert!(!own.is_dead());
        assert!(own.start_time > 0);
    }

    #[test]
    fn lock_without_start_time_still_parses() {
        let old = r#"{"host":"h","pid":1,"run_id":"r","token":"t","acquired_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-01T00:10:00Z"}"#;
        let lock: LockFile = serde_json::from_str(old).unwrap();
        assert_eq!(lock.start_time, None);
    }
}
