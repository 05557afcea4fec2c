//! ClickHouse: tables created from the lake's schema, partitions loaded from the lake
//! with `s3()` into a staging table and swapped in with `REPLACE PARTITION`, so that
//! a rerun replaces rows instead of appending them.
//!
//! What to create and load is a [`LoadTarget`] (layout.rs), whatever made the lake
//! table; [`ddl::create_table`] is the only DDL. Staging tables live in a database
//! of their own, `<database>_sluice`, and are dropped after each load, so the
//! analysts' database holds only the tables they asked for.

pub mod ddl;
pub mod layout;
mod load;

use arrow::datatypes::Schema;
use clickhouse::Client;
use tracing::Instrument;

use crate::config::{ClickHouseConfig, PartitionGrain};
use crate::error::{chain, redact, register_secret, Error, Result};
use crate::lake::{Lake, LakeLocation};
use ddl::{ident, string};
pub use layout::{Engine, LoadTarget, WarehouseTables};

/// A connection to the warehouse and what it needs to read the lake.
pub struct Warehouse {
    client: Client,
    database: String,
    /// `http(s)://endpoint/bucket[/prefix]` as ClickHouse sees it.
    lake_url: String,
    credentials: Option<(String, String)>,
    /// Most days per load statement (`clickhouse.days_per_load`).
    days_per_load: usize,
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
            days_per_load: config.days_per_load,
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

    /// The database of the staging tables: `<database>_sluice`.
    fn stage_database(&self) -> String {
        format!("{}_sluice", self.database)
    }

    /// The staging twin of `table`, qualified.
    fn stage(&self, table: &str) -> String {
        format!("{}.{}", ident(&self.stage_database()), ident(table))
    }

    /// Makes the staging twin of `table` afresh (empty, the table's columns). A
    /// `TRUNCATE` removes the parts before it answers (1-2 s for 100 loaded days);
    /// an Atomic database drops a table's data in the background, so this takes
    /// milliseconds.
    async fn reset_stage(&self, table: &str) -> Result<()> {
        let stage = self.stage(table);
        self.execute(
            table,
            &format!(
                "CREATE DATABASE IF NOT EXISTS {}",
                ident(&self.stage_database())
            ),
        )
        .await?;
        self.execute(table, &format!("DROP TABLE IF EXISTS {stage}"))
            .await?;
        self.execute(
            table,
            &format!("CREATE TABLE {stage} AS {}", self.qualified(table)),
        )
        .await
    }

    /// Drops the staging twin of `table` once a load is done.
    async fn drop_stage(&self, table: &str) -> Result<()> {
        self.execute(
            table,
            &format!("DROP TABLE IF EXISTS {}", self.stage(table)),
        )
        .await
    }

    /// Creates the database and `target`'s table if missing, refuses one made with
    /// another partition grain, and brings an existing table's columns to the
    /// lake's schema.
    pub async fn ensure_table(&self, target: &LoadTarget, schema: &Schema) -> Result<()> {
        let name = &target.name;
        self.execute(
            name,
            &format!("CREATE DATABASE IF NOT EXISTS {}", ident(&self.database)),
        )
        .await?;
        let ddl = ddl::create_table(&self.database, target, schema)
            .map_err(|e| Error::warehouse(name, e))?;
        self.execute(name, &ddl).await?;
        if target.partition.is_some() {
            self.check_grain(name, target.grain()).await?;
        }
        let columns = ddl::column_types(target, schema).map_err(|e| Error::warehouse(name, e))?;
        self.sync_columns(name, &columns).await
    }

    /// Refuses a table that exists with another partition grain than the config's:
    /// loading days into month partitions (or the reverse) would replace the
    /// wrong rows.
    pub async fn check_grain(&self, name: &str, grain: PartitionGrain) -> Result<()> {
        let keys = retry(name, || {
            self.client
                .query_raw(&format!(
                    "SELECT partition_key FROM system.tables WHERE database = {} AND name = {}",
                    string(&self.database),
                    string(name)
                ))
                .fetch_all::<String>()
        })
        .await?;
        let Some(key) = keys.first() else {
            return Ok(());
        };
        let actual = if key.starts_with("toYYYYMMDD(") {
            PartitionGrain::Day
        } else if key.starts_with("toYYYYMM(") {
            PartitionGrain::Month
        } else {
            return Ok(());
        };
        if actual == grain {
            return Ok(());
        }
        Err(Error::warehouse(
            name,
            format!(
                "the ClickHouse table is partitioned by {key} but the config asks for {} partitions; set clickhouse_partition = \"{}\" to keep the table, or drop it so that it is created and loaded again",
                grain_name(grain),
                grain_name(actual)
            ),
        ))
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
        self.execute(
            name,
            &format!("DROP TABLE IF EXISTS {}", self.qualified(name)),
        )
        .await?;
        self.drop_stage(name).await
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

fn grain_name(grain: PartitionGrain) -> &'static str {
    match grain {
        PartitionGrain::Day => "day",
        PartitionGrain::Month => "month",
    }
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

/// The URL path segment of one lake path segment: first as the lake names the
/// object (`lake::join`: the name itself), then percent-encoded for the URL:
/// everything but RFC 3986 unreserved characters and `=` (the Hive separator)
/// becomes `%XX` per UTF-8 byte.
fn encode_segment(segment: &str) -> String {
    let key = crate::lake::join(&object_store::path::Path::default(), segment);
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
