//! One writer per table: a lock object in the lake, `<table>/_lock.json`.
//!
//! The lock names its holder (host, process id, run id) and expires: the holder
//! refreshes it every minute, and a lock not refreshed for [`LOCK_TTL`] is taken
//! over. On the same host a lock whose process no longer exists is taken over at
//! once, so a run killed with `kill -9` does not block the next one.
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

    /// Whether the holder is gone: the lock expired, or its process no longer
    /// exists on this host.
    fn is_stale(&self, host: &str) -> bool {
        self.expires_at < Utc::now()
            || (self.host == host && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists())
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
        let fresh = |now: DateTime<Utc>| LockFile {
            host: host.clone(),
            pid: std::process::id(),
            run_id: run_id.to_string(),
            token: token.clone(),
            acquired_at: now,
            expires_at: now + ttl(),
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
