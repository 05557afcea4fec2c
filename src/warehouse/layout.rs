//! What the warehouse is asked to hold: a [`LoadTarget`] per ClickHouse table,
//! built from a watermark or snapshot table's config, a change table, its
//! current-state twin, or a SQL model — never the source's config itself.

use crate::config::{PartitionGrain, TableConfig};

/// The table engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// `MergeTree`: the table holds exactly the lake's rows.
    MergeTree,
    /// `ReplacingMergeTree(version, is_deleted)`: one row per key survives merges
    /// (`SELECT … FINAL` is the current state).
    Replacing { version: String, is_deleted: String },
}

impl Engine {
    /// The `ENGINE = …` clause's value.
    pub fn clause(&self) -> String {
        match self {
            Engine::MergeTree => "MergeTree".into(),
            Engine::Replacing {
                version,
                is_deleted,
            } => format!("ReplacingMergeTree({version}, {is_deleted})"),
        }
    }
}

/// How one ClickHouse table is laid out and loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadTarget {
    /// The ClickHouse table (and the lake table whose files it loads).
    pub name: String,
    /// The partition column and the grain of ClickHouse partitions (`None`: the
    /// table is one partition, `all`).
    pub partition: Option<(String, PartitionGrain)>,
    /// `ORDER BY` (empty: `tuple()`).
    pub key: Vec<String>,
    pub engine: Engine,
    /// Rows older than this many days of the partition column are dropped (TTL),
    /// and pending days older than that are not loaded.
    pub retention_days: Option<u32>,
}

impl LoadTarget {
    /// A watermark or snapshot table, laid out as its config says: partitioned by
    /// `partition_column` (the config's `partition_by`, or the snapshot date).
    pub fn for_table(table: &TableConfig, partition_column: &str, key: &[String]) -> Self {
        Self {
            name: table.name.clone(),
            partition: Some((partition_column.to_string(), table.clickhouse_grain())),
            key: key.to_vec(),
            engine: Engine::MergeTree,
            retention_days: table.retention_days,
        }
    }

    /// A change table `name` (one row per change, partitioned by day of change).
    pub fn changes(name: &str, change_date: &str, key: &[String], retention: Option<u32>) -> Self {
        Self {
            name: name.to_string(),
            partition: Some((change_date.to_string(), PartitionGrain::Day)),
            key: key.to_vec(),
            engine: Engine::MergeTree,
            retention_days: retention,
        }
    }

    /// The current-state twin `name` of a change table: the same rows in a
    /// `ReplacingMergeTree(version, is_deleted)`, without TTL (a key unchanged for
    /// longer than the retention is still current).
    pub fn current(
        name: &str,
        change_date: &str,
        key: &[String],
        version: &str,
        is_deleted: &str,
    ) -> Self {
        Self {
            name: name.to_string(),
            partition: Some((change_date.to_string(), PartitionGrain::Day)),
            key: key.to_vec(),
            engine: Engine::Replacing {
                version: version.to_string(),
                is_deleted: is_deleted.to_string(),
            },
            retention_days: None,
        }
    }

    /// A SQL model: partitioned by day or month of its partition column, or not
    /// partitioned at all.
    pub fn model(name: &str, partition: Option<(&str, PartitionGrain)>, key: &[String]) -> Self {
        Self {
            name: name.to_string(),
            partition: partition.map(|(c, g)| (c.to_string(), g)),
            key: key.to_vec(),
            engine: Engine::MergeTree,
            retention_days: None,
        }
    }

    /// The partition column (`""` for an unpartitioned table).
    pub fn partition_column(&self) -> &str {
        self.partition.as_ref().map_or("", |(c, _)| c.as_str())
    }

    /// The grain of ClickHouse partitions (an unpartitioned table counts as
    /// day-grained: its one "day" is the partition `all`).
    pub fn grain(&self) -> PartitionGrain {
        self.partition
            .as_ref()
            .map_or(PartitionGrain::Day, |(_, g)| *g)
    }
}

/// The ClickHouse tables made from one lake table.
#[derive(Debug, Clone)]
pub struct WarehouseTables {
    /// Loaded from the lake table's files.
    pub target: LoadTarget,
    /// The current-state twin of a change table, copied from `target` after
    /// each of its partitions is loaded.
    pub current: Option<LoadTarget>,
}
