//! Which tables of a run have committed their new lake version, for the SQL
//! models that run beside the tables (each starts once what it reads is in).

use std::collections::{BTreeMap, BTreeSet};

/// Which tables of a run have committed their new lake version: the SQL models
/// run beside the tables, each as soon as every table it reads is committed
/// (its ClickHouse load may still be going on; models read the lake).
#[derive(Debug)]
pub struct LakeCommits {
    state: tokio::sync::watch::Sender<BTreeMap<String, Commit>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Pending,
    Committed,
    /// The table failed, or did not start after another one failed.
    Failed,
}

impl LakeCommits {
    /// The tables of a run, none committed yet.
    pub fn new(tables: impl IntoIterator<Item = String>) -> Self {
        let state = tables.into_iter().map(|t| (t, Commit::Pending)).collect();
        Self {
            state: tokio::sync::watch::Sender::new(state),
        }
    }

    /// Whether `table` is one of the run's tables (the others are read as the
    /// lake has them).
    pub fn in_run(&self, table: &str) -> bool {
        self.state.borrow().contains_key(table)
    }

    fn set(&self, table: &str, to: Commit) {
        self.state.send_modify(|state| {
            if let Some(commit) = state.get_mut(table) {
                if *commit == Commit::Pending {
                    *commit = to;
                }
            }
        });
    }

    /// `table`'s new version is in the lake.
    pub fn committed(&self, table: &str) {
        self.set(table, Commit::Committed);
    }

    /// `table` failed or will not run: what reads it will not run either.
    pub fn failed(&self, table: &str) {
        self.set(table, Commit::Failed);
    }

    /// Whether every one of `tables` that is in the run is committed (`false`:
    /// some are still running); the name of one that failed.
    pub fn state_of(&self, tables: &BTreeSet<String>) -> std::result::Result<bool, String> {
        let state = self.state.borrow();
        if let Some(failed) = tables
            .iter()
            .find(|t| state.get(*t) == Some(&Commit::Failed))
        {
            return Err(failed.clone());
        }
        Ok(tables
            .iter()
            .all(|t| state.get(t) != Some(&Commit::Pending)))
    }

    /// A receiver that sees every change of the tables' state.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<impl Sized> {
        self.state.subscribe()
    }
}
