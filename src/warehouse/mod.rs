//! ClickHouse: tables created from the lake's schema, partitions loaded from the lake
//! with `s3()` into a staging table and swapped in with `REPLACE PARTITION`, so that
//! a rerun replaces rows instead of appending them.

pub mod ddl;

use arrow::datatypes::Schema;
use clickhouse::Client;
use tracing::Instrument;

use crate::config::{ClickHouseConfig, TableConfig};
use crate::error::{chain, redact, register_secret, Error, Result};
use crate::lake::manifest::PartitionEntry;
use crate::lake::{Lake, LakeLocation};
use ddl::{ident, partition_id, string, TableLayout};

/// A connection to the warehouse and what it needs to read the lake.
pub struct Warehouse {
    client: Client,
    database: String,
    /// `http(s)://endpoint/bucket[/prefix]` as ClickHouse sees it.
    lake_url: String,
    credentials: Option<(String, String)>,
}

impl Warehouse {
    /// Prepares a client; nothing is sent until the first statement.
    pub fn new(config: &ClickHouseConfig, lake: &Lake) -> Result<Self> {
        let LakeLocation::S3 { bucket, prefix } = lake.location() else {
            return Err(Error::warehouse(
                "-",
                "ClickHouse reads the lake through s3(): the lake must be an S3 bucket",
            ));
        };
        let endpoint = config
            .s3_endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .unwrap_or_else(|| {
                let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
                format!("https://s3.{region}.amazonaws.com")
            });
        let mut lake_url = format!("{}/{}", endpoint.trim_end_matches('/'), bucket);
        if !prefix.is_empty() {
            let prefix: Vec<String> = prefix.split('/').map(encode_segment).collect();
            lake_url = format!("{lake_url}/{}", prefix.join("/"));
        }
        let credentials = match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(key), Ok(secret)) => {
                register_secret(&secret);
                Some((key, secret))
            }
            _ => None,
        };
        register_secret(&config.password);
        let client = Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_password(&config.password);
        Ok(Self {
            client,
            database: config.database.clone(),
            lake_url,
            credentials,
        })
    }

    /// Runs a statement that is safe to repeat, retrying transient failures.
    async fn execute(&self, table: &str, sql: &str) -> Result<()> {
        retry(table, || self.client.query_raw(sql).execute()).await
    }

    async fn count(&self, table: &str, sql: &str) -> Result<u64> {
        retry(table, || self.client.query_raw(sql).fetch_one::<u64>()).await
    }

    fn qualified(&self, table: &str) -> String {
        format!("{}.{}", ident(&self.database), ident(table))
    }

    fn staging_table(table: &str) -> String {
        format!("_sluice_stage_{table}")
    }

    /// Creates the database and the table (and its staging twin) if missing.
    pub async fn ensure_table(&self, config: &TableConfig, schema: &Schema) -> Result<()> {
        let name = &config.name;
        self.execute(
            name,
            &format!("CREATE DATABASE IF NOT EXISTS {}", ident(&self.database)),
        )
        .await?;
        let layout = TableLayout {
            database: &self.database,
            table: name,
            schema,
            partition_column: &config.partition_by,
            key: &config.key,
            retention_days: config.retention_days,
        };
        let ddl = layout
            .create_table()
            .map_err(|e| Error::warehouse(name, e))?;
        self.execute(name, &ddl).await?;
        let columns = layout
            .column_types()
            .map_err(|e| Error::warehouse(name, e))?;
        self.sync_columns(name, &columns).await?;
        // The staging twin is made afresh: the target may just have gained columns.
        let stage = self.qualified(&Self::staging_table(name));
        self.execute(name, &format!("DROP TABLE IF EXISTS {stage}"))
            .await?;
        self.execute(
            name,
            &format!("CREATE TABLE {stage} AS {}", self.qualified(name)),
        )
        .await
    }

    /// Brings an existing table's columns to the lake's schema: adds new columns and
    /// widens changed ones (idempotent, so a crash between the lake commit and the
    /// load is repaired by the next run).
    async fn sync_columns(&self, name: &str, columns: &[(String, String)]) -> Result<()> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Column {
            name: String,
            #[serde(rename = "type")]
            ty: String,
        }
        let present = self
            .client
            .query_raw(&format!(
                "SELECT name, type FROM system.columns WHERE database = {} AND table = {} ORDER BY position",
                string(&self.database),
                string(name)
            ))
            .fetch_all::<Column>()
            .instrument(client_span())
            .await
            .map_err(|e| Error::warehouse(name, chain(&e)))?;
        let target = self.qualified(name);
        for (column, ty) in columns {
            let alter = match present.iter().find(|c| &c.name == column) {
                None => format!(
                    "ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {} {ty}",
                    ident(column)
                ),
                Some(c) if &c.ty != ty => {
                    format!("ALTER TABLE {target} MODIFY COLUMN {} {ty}", ident(column))
                }
                Some(_) => continue,
            };
            tracing::info!(table = name, column = %column, to = %ty, "Altering a ClickHouse column.");
            self.execute(name, &alter).await?;
        }
        Ok(())
    }

    /// Drops the table and its staging twin (a rebuild reloads them from the lake).
    pub async fn drop_table(&self, name: &str) -> Result<()> {
        for table in [name.to_string(), Self::staging_table(name)] {
            self.execute(
                name,
                &format!("DROP TABLE IF EXISTS {}", self.qualified(&table)),
            )
            .await?;
        }
        Ok(())
    }

    /// Creates the database, the table `name` with `create_table` (a `CREATE TABLE
    /// IF NOT EXISTS`), and its staging twin, for tables not described by a
    /// [`TableConfig`] (SQL models).
    pub async fn ensure_table_with(&self, name: &str, create_table: &str) -> Result<()> {
        self.execute(
            name,
            &format!("CREATE DATABASE IF NOT EXISTS {}", ident(&self.database)),
        )
        .await?;
        self.execute(name, create_table).await?;
        self.execute(
            name,
            &format!(
                "CREATE TABLE IF NOT EXISTS {} AS {}",
                self.qualified(&Self::staging_table(name)),
                self.qualified(name)
            ),
        )
        .await
    }

    /// The database the tables live in.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Replaces one day of `config.name` with the lake's files of that day and
    /// checks the row count. Returns the rows now in that ClickHouse partition.
    pub async fn load_partition(
        &self,
        config: &TableConfig,
        columns: &[String],
        day: &str,
        partition: &PartitionEntry,
    ) -> Result<u64> {
        let name = &config.name;
        let target = self.qualified(name);
        let stage = self.qualified(&Self::staging_table(name));
        self.execute(name, &format!("TRUNCATE TABLE {stage}"))
            .await?;
        if !partition.files.is_empty() {
            let column_list = columns
                .iter()
                .map(|c| ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                // The lake's folders are `col=day`: without this ClickHouse would read
                // the partition column from the path (a date) instead of the file.
                // s3_retry_attempts: ClickHouse's default (hundreds) would stall the
                // load for many minutes when the lake is unreachable; sluice
                // retries the whole load itself.
                "INSERT INTO {stage} ({column_list}) SELECT {column_list} FROM {} \
                 SETTINGS use_hive_partitioning = 0, s3_retry_attempts = 3",
                self.s3_call(name, partition)
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
                        self.execute(name, &format!("TRUNCATE TABLE {stage}"))
                            .await?;
                    }
                    Err(e) => return Err(Error::warehouse(name, chain(&e))),
                }
            }
            crate::fault::point("warehouse.after_stage_insert");
        }
        let staged = self
            .count(name, &format!("SELECT count() FROM {stage}"))
            .await?;
        if staged != partition.rows {
            return Err(Error::warehouse(
                name,
                format!(
                    "partition {day}: staged {staged} rows but the lake has {}; nothing was replaced",
                    partition.rows
                ),
            ));
        }
        let id = partition_id(day);
        // REPLACE from an empty source is refused by some ClickHouse versions; an
        // emptied day is a DROP.
        let swap = if staged == 0 {
            format!("ALTER TABLE {target} DROP PARTITION ID {}", string(&id))
        } else {
            format!(
                "ALTER TABLE {target} REPLACE PARTITION ID {} FROM {stage}",
                string(&id)
            )
        };
        self.execute(name, &swap).await?;
        crate::fault::point("warehouse.after_replace");
        let loaded = self
            .count(
                name,
                &format!(
                    "SELECT count() FROM {target} WHERE _partition_id = {}",
                    string(&id)
                ),
            )
            .await?;
        if loaded != partition.rows {
            return Err(Error::warehouse(
                name,
                format!(
                    "partition {day}: {loaded} rows after REPLACE PARTITION, expected {}",
                    partition.rows
                ),
            ));
        }
        self.execute(name, &format!("TRUNCATE TABLE {stage}"))
            .await?;
        Ok(loaded)
    }

    /// `s3('<url of the partition's files>', [key, secret,] 'Parquet')`.
    fn s3_call(&self, table: &str, partition: &PartitionEntry) -> String {
        let (dir, names) = split_dir(
            &partition
                .files
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>(),
        );
        // Path segments are percent-encoded (table and column names may hold
        // spaces, quotes or unicode); the `{a,b}` alternation stays literal.
        let names: Vec<String> = names.iter().map(|n| encode_segment(n)).collect();
        let names = if names.len() == 1 {
            names[0].clone()
        } else {
            format!("{{{}}}", names.join(","))
        };
        let url = format!(
            "{}/{}/{}/{}",
            self.lake_url,
            encode_segment(table),
            encode_segment(dir),
            names
        );
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

    /// Rows per ClickHouse partition ID of `table` (for checks and tests).
    pub async fn partition_counts(&self, table: &str) -> Result<Vec<(String, u64)>> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct PartitionCount {
            id: String,
            rows: u64,
        }
        let rows = self
            .client
            .query_raw(&format!(
                "SELECT _partition_id AS id, count() AS rows FROM {} GROUP BY id ORDER BY id",
                self.qualified(table)
            ))
            .fetch_all::<PartitionCount>()
            .instrument(client_span())
            .await
            .map_err(|e| Error::warehouse(table, chain(&e)))?;
        Ok(rows.into_iter().map(|r| (r.id, r.rows)).collect())
    }
}

/// A span of its own for each ClickHouse call: the `clickhouse` crate records
/// response fields into the current span, which would otherwise be the table's.
fn client_span() -> tracing::Span {
    tracing::info_span!("clickhouse")
}

/// Attempts per ClickHouse statement when the failure is transient.
const ATTEMPTS: u32 = 3;
const FIRST_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// Network failures and timeouts may pass; errors ClickHouse answered with will not.
fn is_transient(error: &clickhouse::error::Error) -> bool {
    matches!(
        error,
        clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut
    )
}

/// Calls `call` up to [`ATTEMPTS`] times while it fails transiently, with backoff.
async fn retry<T, F, Fut>(table: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = clickhouse::error::Result<T>>,
{
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 1;
    loop {
        match call().instrument(client_span()).await {
            Ok(value) => return Ok(value),
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                tracing::warn!(table, attempt, error = %redact(&chain(&e)), "ClickHouse call failed; retrying.");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(Error::warehouse(table, chain(&e))),
        }
    }
}

/// The URL path segment of one lake path segment: first as object_store names the
/// object (it percent-encodes characters not allowed in keys, e.g. non-ASCII), then
/// percent-encoded for the URL: everything but RFC 3986 unreserved characters and
/// `=` (the Hive separator) becomes `%XX` per UTF-8 byte.
fn encode_segment(segment: &str) -> String {
    let key = object_store::path::PathPart::from(segment);
    let mut out = String::with_capacity(segment.len());
    for byte in key.as_ref().bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'=' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Splits file paths of one folder into the folder and the file names.
fn split_dir<'a>(paths: &[&'a str]) -> (&'a str, Vec<&'a str>) {
    let mut dir = "";
    let names = paths
        .iter()
        .map(|p| match p.rsplit_once('/') {
            Some((d, n)) => {
                dir = d;
                n
            }
            None => p,
        })
        .collect();
    (dir, names)
}

/// Snapshot-diff loads (src/capture/snapshot.rs): a table derived from another
/// ClickHouse table, partition by partition.
impl Warehouse {
    /// Creates the database, the table with `engine` (e.g.
    /// `ReplacingMergeTree(_version, _is_deleted)`), one partition per day of
    /// `partition_column`, no TTL, and the table's staging twin.
    pub async fn ensure_table_with_engine(
        &self,
        table: &str,
        schema: &Schema,
        partition_column: &str,
        key: &[String],
        engine: &str,
    ) -> Result<()> {
        let ddl = TableLayout {
            database: &self.database,
            table,
            schema,
            partition_column,
            key,
            retention_days: None,
        }
        .create_table_with_engine(engine)
        .map_err(|e| Error::warehouse(table, e))?;
        self.ensure_table_with(table, &ddl).await
    }

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
        let stage = self.qualified(&Self::staging_table(table));
        let id = string(&partition_id(day));
        self.execute(table, &format!("TRUNCATE TABLE {stage}"))
            .await?;
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
        self.execute(table, &format!("TRUNCATE TABLE {stage}"))
            .await?;
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
