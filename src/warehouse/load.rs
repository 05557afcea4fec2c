//! Loading lake days into ClickHouse: the only load loop. The lake's files of up
//! to `days_per_load` days go into the table's staging twin with one
//! `INSERT … SELECT FROM s3(…)`, every day's rows are counted against the lake,
//! and the partitions are swapped in by `REPLACE PARTITION`; a current-state
//! twin copies its change table partition by partition.

use tracing::Instrument;

use super::ddl::{ident, partition_id, partition_id_for, string, UNPARTITIONED};
use super::{
    client_span, encode_segment, is_transient, retry, LoadTarget, Warehouse, ATTEMPTS,
    FIRST_RETRY_DELAY,
};
use crate::config::PartitionGrain;
use crate::error::{chain, redact, Error, Result};
use crate::lake::manifest::PartitionEntry;

impl Warehouse {
    /// Replaces the given days of `target.name` with the lake's files of those days,
    /// several days per statement (see [`LoadBatch`]): the files are inserted into
    /// the staging twin, the per-day row counts checked against the lake, then every
    /// day is swapped in by one `ALTER TABLE … REPLACE PARTITION …, REPLACE
    /// PARTITION …` and counted again. Each day is replaced atomically; a failure
    /// part way leaves some days old and some new, and the caller loads them all
    /// again on the next run. Returns the rows now in each ClickHouse partition, in
    /// the order given.
    pub async fn load_partitions(
        &self,
        target: &LoadTarget,
        columns: &[String],
        days: &[(String, PartitionEntry)],
    ) -> Result<Vec<(String, u64)>> {
        self.load_partitions_with(target, columns, days, |_| {})
            .await
    }

    /// [`Self::load_partitions`], calling `on_loaded` with each day as soon as its
    /// statement is done (the progress of `sluice run`).
    pub async fn load_partitions_with(
        &self,
        target: &LoadTarget,
        columns: &[String],
        days: &[(String, PartitionEntry)],
        mut on_loaded: impl FnMut(&str),
    ) -> Result<Vec<(String, u64)>> {
        let mut loaded = Vec::with_capacity(days.len());
        let grain = target.grain();
        for batch in LoadBatch::split(days, self.days_per_load, grain) {
            let done = self.load_batch(target, columns, batch).await?;
            done.iter().for_each(|(day, _)| on_loaded(day));
            loaded.extend(done);
        }
        Ok(loaded)
    }

    /// Loads `days` (at most `days_per_load`) into their ClickHouse partitions: the
    /// lake's files of `days` are staged; in a table partitioned by month the other
    /// days of their months are copied from the table itself (they are loaded
    /// already, or they would be among `days`); the staged rows of every day are
    /// counted against the lake and the table, and each partition is swapped in
    /// whole by one `ALTER … REPLACE PARTITION`. A failed check replaces nothing.
    async fn load_batch(
        &self,
        load: &LoadTarget,
        columns: &[String],
        days: &[(String, PartitionEntry)],
    ) -> Result<Vec<(String, u64)>> {
        let name = &load.name;
        let grain = load.grain();
        let target = self.qualified(name);
        let stage = self.stage(name);
        let day_of = if load.partition.is_none() {
            // A table without a partition column (a model without `partition_by`)
            // is one ClickHouse partition, `all`, loaded as the one "day" `all`.
            string(UNPARTITIONED)
        } else {
            format!("toString(toDate32({}))", ident(load.partition_column()))
        };
        let partitions: std::collections::BTreeSet<String> = days
            .iter()
            .map(|(day, _)| partition_id_for(day, grain))
            .collect();
        let partition_list = partitions
            .iter()
            .map(|p| string(p))
            .collect::<Vec<_>>()
            .join(", ");
        let day_list = days
            .iter()
            .map(|(d, _)| string(d))
            .collect::<Vec<_>>()
            .join(", ");
        // `_partition_id` first: ClickHouse reads only those partitions.
        let in_partitions = format!("_partition_id IN ({partition_list})");

        self.reset_stage(name).await?;
        self.insert_files(name, &stage, columns, days).await?;
        let kept = match grain {
            // A day partition holds one day: nothing else to keep.
            PartitionGrain::Day => std::collections::HashMap::new(),
            PartitionGrain::Month => {
                let kept_filter = format!("{in_partitions} AND {day_of} NOT IN ({day_list})");
                let kept = self
                    .counts_by_day(name, &day_of, &target, &kept_filter)
                    .await?;
                if !kept.is_empty() {
                    // Once only: a lost answer may hide a done insert, and a second
                    // copy would double the kept days. A failure leaves the days
                    // pending.
                    self.client
                        .query_raw(&format!(
                            "INSERT INTO {stage} SELECT * FROM {target} WHERE {kept_filter} \
                             SETTINGS optimize_on_insert = 0"
                        ))
                        .execute()
                        .instrument(client_span())
                        .await
                        .map_err(|e| Error::warehouse(name, chain(&e)))?;
                }
                kept
            }
        };
        let staged = self.counts_by_day(name, &day_of, &stage, "1").await?;
        for (day, rows) in &staged {
            let expected = days
                .iter()
                .find(|(d, _)| d == day)
                .map(|(_, p)| p.rows)
                .or_else(|| kept.get(day).copied());
            if expected != Some(*rows) {
                return Err(Error::warehouse(
                    name,
                    format!(
                        "day {day}: staged {rows} rows, expected {}; nothing was replaced",
                        expected.map_or("none (not a day of this load)".into(), |r| r.to_string())
                    ),
                ));
            }
        }
        for (day, partition) in days {
            let got = staged.get(day).copied().unwrap_or(0);
            if got != partition.rows {
                return Err(Error::warehouse(
                    name,
                    format!(
                        "partition {day}: staged {got} rows but the lake has {}; nothing was replaced",
                        partition.rows
                    ),
                ));
            }
        }
        // REPLACE from an empty source is refused by some ClickHouse versions; an
        // emptied partition is a DROP.
        let swaps: Vec<String> = partitions
            .iter()
            .map(|id| {
                let empty = !staged
                    .iter()
                    .any(|(d, r)| *r > 0 && partition_id_for(d, grain) == *id);
                if empty {
                    format!("DROP PARTITION ID {}", string(id))
                } else {
                    format!("REPLACE PARTITION ID {} FROM {stage}", string(id))
                }
            })
            .collect();
        self.execute(name, &format!("ALTER TABLE {target} {}", swaps.join(", ")))
            .await?;
        crate::fault::point("warehouse.after_replace");
        let loaded = self
            .counts_by_day(
                name,
                &day_of,
                &target,
                &format!("{in_partitions} AND {day_of} IN ({day_list})"),
            )
            .await?;
        let mut result = Vec::with_capacity(days.len());
        for (day, partition) in days {
            let got = loaded.get(day).copied().unwrap_or(0);
            if got != partition.rows {
                return Err(Error::warehouse(
                    name,
                    format!(
                        "day {day}: {got} rows after REPLACE PARTITION, expected {}",
                        partition.rows
                    ),
                ));
            }
            result.push((day.clone(), got));
        }
        self.drop_stage(name).await?;
        Ok(result)
    }

    /// Inserts the lake files of `days` into the staging table `stage` (qualified)
    /// with one `INSERT … SELECT FROM s3(…)`; a transient failure empties the
    /// staging table and tries again.
    async fn insert_files(
        &self,
        name: &str,
        stage: &str,
        columns: &[String],
        days: &[(String, PartitionEntry)],
    ) -> Result<()> {
        let files: Vec<&str> = days
            .iter()
            .flat_map(|(_, p)| p.files.iter().map(|f| f.path.as_str()))
            .collect();
        if !files.is_empty() {
            let column_list = columns
                .iter()
                .map(|c| ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                // The lake's folders are `col=day`: without use_hive_partitioning = 0
                // ClickHouse would read the partition column from the path (a date)
                // instead of the file. s3_retry_attempts: ClickHouse's default
                // (hundreds) would stall the load for many minutes when the lake is
                // unreachable; sluice retries the whole load itself.
                // max_partitions_per_insert_block: a batch holds at most
                // days_per_load days.
                "INSERT INTO {stage} ({column_list}) SELECT {column_list} FROM {} \
                 SETTINGS use_hive_partitioning = 0, s3_retry_attempts = 3, \
                 max_partitions_per_insert_block = {}",
                self.s3_call(name, &files),
                self.days_per_load.max(100)
            );
            // Not repeatable as such (a lost answer may hide a done insert): each
            // retry starts again from an empty staging table.
            let mut delay = FIRST_RETRY_DELAY;
            for attempt in 1..=ATTEMPTS {
                match self
                    .client
                    .query_raw(&sql)
                    .execute()
                    .instrument(client_span())
                    .await
                {
                    Ok(()) => break,
                    Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                        tracing::warn!(table = %name, attempt, error = %redact(&chain(&e)), "ClickHouse insert failed; retrying.");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        self.reset_stage(name).await?;
                    }
                    Err(e) => return Err(Error::warehouse(name, chain(&e))),
                }
            }
            crate::fault::point("warehouse.after_stage_insert");
        }
        Ok(())
    }

    /// Rows per day (`day_of`, an SQL expression giving `YYYY-MM-DD`) of the
    /// qualified table `table` where `filter` holds.
    async fn counts_by_day(
        &self,
        name: &str,
        day_of: &str,
        table: &str,
        filter: &str,
    ) -> Result<std::collections::HashMap<String, u64>> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct DayCount {
            day: String,
            rows: u64,
        }
        let sql = format!(
            "SELECT {day_of} AS day, count() AS rows FROM {table} WHERE {filter} GROUP BY day"
        );
        let rows = retry(name, || self.client.query_raw(&sql).fetch_all::<DayCount>()).await?;
        Ok(rows.into_iter().map(|r| (r.day, r.rows)).collect())
    }

    /// `s3('<url of the files>', [key, secret,] 'Parquet')` for files given relative
    /// to the table folder: `table/dir/{a,b}` when they share a folder, otherwise
    /// `table/{dir1/a,dir2/b}` (one listing of the table folder, matched by
    /// ClickHouse's glob).
    fn s3_call(&self, table: &str, files: &[&str]) -> String {
        let (dir, names) = split_dir(files);
        let names: Vec<String> = names
            .iter()
            .map(|n| {
                n.split('/')
                    .map(encode_segment)
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        let names = if names.len() == 1 {
            names[0].clone()
        } else {
            format!("{{{}}}", names.join(","))
        };
        let url = match dir {
            Some(dir) => format!(
                "{}/{}/{}/{}",
                self.lake_url,
                encode_segment(table),
                encode_segment(dir),
                names
            ),
            None => format!("{}/{}/{}", self.lake_url, encode_segment(table), names),
        };
        match &self.credentials {
            Some((key, secret)) => format!(
                "s3({}, {}, {}, 'Parquet')",
                string(&url),
                string(key),
                string(secret)
            ),
            None => format!("s3({}, NOSIGN, 'Parquet')", string(&url)),
        }
    }
}

/// Splits file paths into their common folder and the names under it, or `None`
/// and the whole paths when they lie in different folders.
fn split_dir<'a>(paths: &[&'a str]) -> (Option<&'a str>, Vec<&'a str>) {
    let dir_of = |p: &'a str| p.rsplit_once('/').map(|(d, _)| d);
    let common = paths.first().and_then(|p| dir_of(p));
    if common.is_some() && paths.iter().all(|p| dir_of(p) == common) {
        let names = paths
            .iter()
            .map(|p| p.rsplit_once('/').map_or(*p, |(_, n)| n))
            .collect();
        (common, names)
    } else {
        (None, paths.to_vec())
    }
}

/// Bounds on one load statement, so that the `{a,b,…}` file list and the staged
/// data stay small.
const MAX_FILES_PER_LOAD: usize = 1_000;
const MAX_BYTES_PER_LOAD: u64 = 4 << 30;

/// Groups of consecutive days loaded by one statement.
struct LoadBatch;

impl LoadBatch {
    /// Splits `days` (in order) into runs of at most `max_partitions` ClickHouse
    /// partitions of `grain` (days, or months: a month's days stay together, so
    /// that its partition is replaced once), [`MAX_FILES_PER_LOAD`] files and
    /// [`MAX_BYTES_PER_LOAD`] bytes (a single day over a bound is a batch of its
    /// own). Days whose folder holds glob metacharacters (from a partition column
    /// name) are loaded alone, since their folder cannot sit inside a `{…}`
    /// alternation.
    fn split(
        days: &[(String, PartitionEntry)],
        max_partitions: usize,
        grain: PartitionGrain,
    ) -> Vec<&[(String, PartitionEntry)]> {
        let mut batches = Vec::new();
        let mut start = 0;
        let (mut files, mut bytes, mut partitions) = (0usize, 0u64, 0usize);
        let mut last_partition = None;
        for (i, (day, partition)) in days.iter().enumerate() {
            let (f, b) = (
                partition.files.len(),
                partition.files.iter().map(|f| f.bytes).sum::<u64>(),
            );
            let id = partition_id_for(day, grain);
            let new_partition = last_partition.as_ref() != Some(&id);
            let alone = partition.files.iter().any(|f| has_glob_chars(&f.path));
            let full = (new_partition && partitions >= max_partitions)
                || files + f > MAX_FILES_PER_LOAD
                || bytes + b > MAX_BYTES_PER_LOAD;
            if i > start && (alone || full) {
                batches.push(&days[start..i]);
                start = i;
                (files, bytes, partitions) = (0, 0, 0);
            }
            if new_partition || i == start {
                partitions += 1;
            }
            last_partition = Some(id);
            files += f;
            bytes += b;
            if alone {
                batches.push(&days[start..=i]);
                start = i + 1;
                (files, bytes, partitions) = (0, 0, 0);
            }
        }
        if start < days.len() {
            batches.push(&days[start..]);
        }
        batches
    }
}

fn has_glob_chars(path: &str) -> bool {
    path.contains(['{', '}', ',', '*', '?'])
}

/// Current-state tables (`<table>_current`): derived from another ClickHouse
/// table, partition by partition.
impl Warehouse {
    /// Replaces partition `day` of `table` with the rows of the same partition of
    /// `from` (same columns), checking that `expected` rows arrive. Returns the
    /// rows now in that partition.
    pub async fn copy_partition(
        &self,
        table: &str,
        from: &str,
        day: &str,
        expected: u64,
    ) -> Result<u64> {
        let target = self.qualified(table);
        let stage = self.stage(table);
        let id = string(&partition_id(day));
        self.reset_stage(table).await?;
        self.execute(
            table,
            // optimize_on_insert = 0: into a ReplacingMergeTree, an insert would
            // otherwise collapse the versions of a key within the block (a change
            // stream's day holds several changes of one key), and the count
            // check below would fail. FINAL picks the latest version anyway.
            &format!(
                "INSERT INTO {stage} SELECT * FROM {} WHERE _partition_id = {id} \
                 SETTINGS optimize_on_insert = 0",
                self.qualified(from)
            ),
        )
        .await?;
        let staged = self
            .count(table, &format!("SELECT count() FROM {stage}"))
            .await?;
        if staged != expected {
            return Err(Error::warehouse(
                table,
                format!("partition {day}: staged {staged} rows from {from}, expected {expected}; nothing was replaced"),
            ));
        }
        let swap = if staged == 0 {
            format!("ALTER TABLE {target} DROP PARTITION ID {id}")
        } else {
            format!("ALTER TABLE {target} REPLACE PARTITION ID {id} FROM {stage}")
        };
        self.execute(table, &swap).await?;
        let loaded = self
            .count(
                table,
                &format!("SELECT count() FROM {target} WHERE _partition_id = {id}"),
            )
            .await?;
        self.drop_stage(table).await?;
        if loaded != expected {
            return Err(Error::warehouse(
                table,
                format!(
                    "partition {day}: {loaded} rows after REPLACE PARTITION, expected {expected}"
                ),
            ));
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::manifest::FileEntry;

    fn day(name: &str, files: &[(&str, u64)]) -> (String, PartitionEntry) {
        let files: Vec<FileEntry> = files
            .iter()
            .map(|(path, bytes)| FileEntry {
                path: path.to_string(),
                rows: 1,
                bytes: *bytes,
            })
            .collect();
        let partition = PartitionEntry {
            rows: files.len() as u64,
            files,
            key_print: None,
        };
        (name.to_string(), partition)
    }

    fn lens(batches: &[&[(String, PartitionEntry)]]) -> Vec<usize> {
        batches.iter().map(|b| b.len()).collect()
    }

    #[test]
    fn batches_hold_at_most_the_partition_limit() {
        let days: Vec<_> = (0..250)
            .map(|i| day(&format!("d{i}"), &[(&format!("c=d{i}/p.parquet"), 10)]))
            .collect();
        assert_eq!(
            lens(&LoadBatch::split(&days, 100, PartitionGrain::Day)),
            vec![100, 100, 50]
        );
        assert!(LoadBatch::split(&[], 100, PartitionGrain::Day).is_empty());
    }

    #[test]
    fn month_partitions_bound_the_batches_and_keep_their_days_together() {
        // 2026-01-01 … 2026-12-31: 365 days in 12 months.
        let days: Vec<_> = (0..365)
            .map(|i| {
                let d = crate::lake::writer::day_string(20_454 + i);
                day(&d, &[(&format!("c={d}/p.parquet"), 10)])
            })
            .collect();
        assert_eq!(days[0].0, "2026-01-01");
        assert_eq!(
            lens(&LoadBatch::split(&days, 100, PartitionGrain::Month)),
            vec![365]
        );
        // Two months a batch: January and February, March and April, …
        assert_eq!(
            lens(&LoadBatch::split(&days, 2, PartitionGrain::Month)),
            vec![59, 61, 61, 62, 61, 61]
        );
    }

    #[test]
    fn batches_are_bounded_by_files_and_bytes() {
        let many: Vec<String> = (0..600).map(|i| format!("c=a/p{i}.parquet")).collect();
        let many: Vec<(&str, u64)> = many.iter().map(|p| (p.as_str(), 1)).collect();
        let days = vec![
            day("a", &many),
            day("b", &many),
            day("c", &[("c=c/p.parquet", 1)]),
        ];
        assert_eq!(
            lens(&LoadBatch::split(&days, 100, PartitionGrain::Day)),
            vec![1, 2]
        );

        let days = vec![
            day("a", &[("c=a/p.parquet", 3 << 30)]),
            day("b", &[("c=b/p.parquet", 3 << 30)]),
            day("c", &[("c=c/p.parquet", 1)]),
        ];
        assert_eq!(
            lens(&LoadBatch::split(&days, 100, PartitionGrain::Day)),
            vec![1, 2]
        );
    }

    #[test]
    fn days_with_glob_characters_are_loaded_alone() {
        let days = vec![
            day("a", &[("c=a/p.parquet", 1)]),
            day("b", &[("c{x,y}=b/p.parquet", 1)]),
            day("c", &[("c=c/p.parquet", 1)]),
            day("d", &[("c=d/p.parquet", 1)]),
        ];
        assert_eq!(
            lens(&LoadBatch::split(&days, 100, PartitionGrain::Day)),
            vec![1, 1, 2]
        );
    }

    #[test]
    fn files_of_one_folder_share_it_others_keep_their_paths() {
        assert_eq!(
            split_dir(&["c=a/p1.parquet", "c=a/p2.parquet"]),
            (Some("c=a"), vec!["p1.parquet", "p2.parquet"])
        );
        assert_eq!(
            split_dir(&["c=a/p1.parquet", "c=b/p2.parquet"]),
            (None, vec!["c=a/p1.parquet", "c=b/p2.parquet"])
        );
    }
}
