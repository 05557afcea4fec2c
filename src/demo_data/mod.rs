//! The reference fintech data set on the real services, for `sluice demo generate`
//! and its change simulator `sluice demo simulate`: users in MongoDB (no timestamp
//! field, captured by snapshot diff), `savings_plan` and `savings_transaction` in
//! PostgreSQL (`updated_at` watermark, `deleted_at` soft deletes), and the e-wallet
//! tables (users, merchants, transactions with a status) in MySQL/MariaDB.
//!
//! Everything is a function of the seed: the same `--scale` and `--seed` give the
//! same rows. Loads are bulk: `COPY FROM STDIN` (text format) into PostgreSQL,
//! `insert_many` batches of 10,000 into MongoDB, multi-row `INSERT`s into MySQL.
//!
//! This file holds what both commands share: the services, the data's vocabulary
//! and the connections; `generate.rs` loads the data set, `simulate.rs` changes it.

mod generate;
mod simulate;

use mongodb::bson::{doc, oid::ObjectId, Document};
use mysql::prelude::Queryable;

use crate::demo::Rng;
use crate::error::{Error, Result};

pub use generate::{generate, TableLoad};
pub use simulate::{simulate, Change, ChangeCounts};

/// Where the three sources live.
#[derive(Debug, Clone)]
pub struct Services {
    /// PostgreSQL: `savings_plan`, `savings_transaction`.
    pub postgres: String,
    /// MySQL/MariaDB: the e-wallet `users`, `merchants`, `transactions`.
    pub mysql: String,
    /// MongoDB: the `users` collection (the URL's path names the database,
    /// `fintech` when it has none).
    pub mongodb: String,
}

/// Defaults of `scripts/services.sh`.
pub const DEFAULT_POSTGRES: &str = "postgres://sluice:sluice@127.0.0.1:5432/sluice";
pub const DEFAULT_MYSQL: &str = "mysql://sluice:sluice@127.0.0.1:3306/sluice";
pub const DEFAULT_MONGODB: &str = "mongodb://127.0.0.1:27017/fintech?directConnection=true";

/// Row counts of a generated data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// MongoDB users (150,000 at scale 1).
    pub users: u64,
    /// E-wallet users, merchants, transactions in MySQL (20K, 2K, 500K at scale 1).
    pub wallet_users: u64,
    pub wallet_merchants: u64,
    pub wallet_transactions: u64,
}

impl Sizes {
    pub fn at(scale: f64) -> Sizes {
        let n = |base: f64| ((base * scale).round() as u64).max(1);
        Sizes {
            users: n(150_000.0),
            wallet_users: n(20_000.0),
            wallet_merchants: n(2_000.0),
            wallet_transactions: n(500_000.0),
        }
    }
}
const FIRST: [&str; 12] = [
    "Ada", "Chidi", "Ngozi", "Tunde", "Amaka", "Bola", "Emeka", "Funmi", "Kemi", "Segun", "Zainab",
    "Musa",
];
const LAST: [&str; 10] = [
    "Obi", "Okafor", "Adeyemi", "Balogun", "Eze", "Nwosu", "Bello", "Ibrahim", "Okoro", "Lawal",
];
const OCCUPATIONS: [&str; 8] = [
    "Engineer", "Teacher", "Trader", "Doctor", "Student", "Farmer", "Banker", "Artisan",
];
const STATES: [&str; 8] = [
    "Lagos", "Abuja", "Kano", "Oyo", "Rivers", "Enugu", "Kaduna", "Edo",
];
const PLAN_NAMES: [&str; 6] = [
    "Rent",
    "School fees",
    "Emergency",
    "Travel",
    "Wedding",
    "Car",
];
const FREQUENCIES: [&str; 3] = ["daily", "weekly", "monthly"];
const PLAN_STATUS: [&str; 4] = ["active", "paused", "completed", "cancelled"];

/// Generated rows are dated in 2025, before any `simulate` call (which uses now).
const EPOCH_DAY: (i32, u32, u32) = (2025, 1, 1);
/// Plans start within 300 days of the epoch; their transactions within 65 days after.
const PLAN_SPAN_SECS: u64 = 300 * 86_400;
const TX_SPAN_SECS: u64 = 65 * 86_400;

pub fn uid(n: u64) -> String {
    format!("UID{n:08}")
}

fn user_oid(n: u64) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[0] = 0x65;
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

fn user_doc(n: u64, rng: &mut Rng) -> Document {
    doc! {
        "_id": user_oid(n),
        "_Uid": uid(n),
        "firstName": rng.pick(&FIRST),
        "lastName": rng.pick(&LAST),
        "occupation": rng.pick(&OCCUPATIONS),
        "state": rng.pick(&STATES),
    }
}
fn pg_err(table: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::source(table, format!("PostgreSQL: {}", crate::error::chain(&e)))
}

fn mongo_err(e: mongodb::error::Error) -> Error {
    Error::source("users", format!("MongoDB: {e}"))
}

fn mysql_err(table: &str) -> impl Fn(mysql::Error) -> Error + '_ {
    move |e| Error::source(table, format!("MySQL: {e}"))
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    crate::error::register_url_secret(url);
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(pg_err("savings_plan"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %crate::error::redact(&e.to_string()), "PostgreSQL connection ended.");
        }
    });
    Ok(client)
}

async fn mongo_users(url: &str) -> Result<mongodb::Collection<Document>> {
    crate::error::register_url_secret(url);
    let options = mongodb::options::ClientOptions::parse(url)
        .await
        .map_err(mongo_err)?;
    let db = options
        .default_database
        .clone()
        .unwrap_or_else(|| "fintech".to_string());
    let client = mongodb::Client::with_options(options).map_err(mongo_err)?;
    Ok(client.database(&db).collection("users"))
}

fn mysql_connect(url: &str) -> Result<mysql::Conn> {
    crate::error::register_url_secret(url);
    let opts = mysql::Opts::from_url(url).map_err(|e| Error::source("transactions", e))?;
    let mut conn = mysql::Conn::new(opts).map_err(mysql_err("transactions"))?;
    conn.query_drop("SET time_zone = '+00:00', NAMES utf8mb4")
        .map_err(mysql_err("transactions"))?;
    Ok(conn)
}
/// Sends `rows` (each `(…)`) as multi-row INSERTs of about 1 MiB.
fn insert_rows(
    conn: &mut mysql::Conn,
    table: &'static str,
    rows: impl Iterator<Item = String>,
) -> Result<()> {
    let head = format!("INSERT INTO {table} VALUES ");
    let mut sql = head.clone();
    for row in rows {
        if sql.len() > head.len() {
            sql.push(',');
        }
        sql.push_str(&row);
        if sql.len() >= 1 << 20 {
            conn.query_drop(&sql).map_err(mysql_err(table))?;
            sql.truncate(0);
            sql.push_str(&head);
        }
    }
    if sql.len() > head.len() {
        conn.query_drop(&sql).map_err(mysql_err(table))?;
    }
    Ok(())
}
