//! The reference fintech data set on the real services, for `sluice demo generate`
//! and its change simulator `sluice demo simulate`: users in MongoDB (no timestamp
//! field, captured by snapshot diff), `savings_plan` and `savings_transaction` in
//! PostgreSQL (`updated_at` watermark, `deleted_at` soft deletes), and the e-wallet
//! tables (users, merchants, transactions with a status) in MySQL/MariaDB.
//!
//! Everything is a function of the seed: the same `--scale` and `--seed` give the
//! same rows. Loads are bulk: `COPY FROM STDIN` (text format) into PostgreSQL,
//! `insert_many` batches of 10,000 into MongoDB, multi-row `INSERT`s into MySQL.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::Instant;

use futures::SinkExt;
use mongodb::bson::{doc, oid::ObjectId, Document};
use mysql::prelude::Queryable;

use crate::demo::Rng;
use crate::error::{Error, Result};

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

/// One loaded table: where, how many rows, how long.
#[derive(Debug, Clone)]
pub struct TableLoad {
    pub system: &'static str,
    pub table: &'static str,
    pub rows: u64,
    pub seconds: f64,
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

/// Fast `YYYY-MM-DD HH:MM:SS+00` for seconds after the epoch day.
struct Stamps(Vec<String>);

impl Stamps {
    fn new() -> Stamps {
        let (y, m, d) = EPOCH_DAY;
        let start = chrono::NaiveDate::from_ymd_opt(y, m, d).expect("valid epoch");
        Stamps(
            (0..400)
                .map(|i| {
                    (start + chrono::TimeDelta::days(i))
                        .format("%Y-%m-%d")
                        .to_string()
                })
                .collect(),
        )
    }

    fn write(&self, out: &mut Vec<u8>, secs: u64) {
        let (day, rest) = (secs / 86_400, secs % 86_400);
        let _ = write!(
            out,
            "{} {:02}:{:02}:{:02}+00",
            self.0[day as usize],
            rest / 3600,
            rest / 60 % 60,
            rest % 60
        );
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

/// A COPY FROM STDIN in 1 MiB chunks.
struct CopyIn {
    sink: std::pin::Pin<Box<tokio_postgres::CopyInSink<bytes::Bytes>>>,
    buf: Vec<u8>,
    table: &'static str,
}

impl CopyIn {
    async fn start(client: &tokio_postgres::Client, table: &'static str) -> Result<CopyIn> {
        let sink = client
            .copy_in(&format!("COPY {table} FROM STDIN"))
            .await
            .map_err(pg_err(table))?;
        Ok(CopyIn {
            sink: Box::pin(sink),
            buf: Vec::with_capacity(1 << 20),
            table,
        })
    }

    async fn flush_if_full(&mut self) -> Result<()> {
        if self.buf.len() >= 1 << 20 {
            let chunk = bytes::Bytes::from(std::mem::take(&mut self.buf));
            self.buf.reserve(1 << 20);
            self.sink.send(chunk).await.map_err(pg_err(self.table))?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<u64> {
        if !self.buf.is_empty() {
            let chunk = bytes::Bytes::from(std::mem::take(&mut self.buf));
            self.sink.send(chunk).await.map_err(pg_err(self.table))?;
        }
        self.sink
            .as_mut()
            .finish()
            .await
            .map_err(pg_err(self.table))
    }
}

/// Creates every table and writes `<system> <table> <rows> rows in <s> s` lines to
/// `out` as each finishes.
pub async fn generate<W: Write>(
    services: &Services,
    scale: f64,
    seed: u64,
    mut out: W,
) -> Result<Vec<TableLoad>> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(Error::Config(crate::error::ConfigError::Argument(format!(
            "--scale must be a positive number, not {scale}"
        ))));
    }
    let sizes = Sizes::at(scale);
    let mut loads = Vec::new();
    let mut report = |out: &mut W, load: TableLoad| -> Result<()> {
        writeln!(
            out,
            "{:<10} {:<20} {:>10} rows {:>8.2} s {:>12.0} rows/s",
            load.system,
            load.table,
            load.rows,
            load.seconds,
            load.rows as f64 / load.seconds.max(1e-9)
        )
        .map_err(|e| Error::Query(e.to_string()))?;
        loads.push(load);
        Ok(())
    };

    // MongoDB runs beside PostgreSQL and MySQL: three servers, three loads at once.
    let mongo = tokio::spawn(generate_users(services.mongodb.clone(), sizes.users, seed));
    let mysql_url = services.mysql.clone();
    let wallet =
        tokio::task::spawn_blocking(move || generate_wallet(&mysql_url, sizes, seed ^ 0x5741));
    for load in generate_savings(&services.postgres, sizes.users, seed).await? {
        report(&mut out, load)?;
    }
    let joined = |e: tokio::task::JoinError| Error::source("demo", e);
    report(&mut out, mongo.await.map_err(joined)??)?;
    for load in wallet.await.map_err(joined)?? {
        report(&mut out, load)?;
    }
    Ok(loads)
}

async fn generate_users(url: String, users: u64, seed: u64) -> Result<TableLoad> {
    let started = Instant::now();
    let coll = mongo_users(&url).await?;
    coll.drop().await.map_err(mongo_err)?;
    let mut rng = Rng(seed ^ 0x5553_4552);
    let mut next = 1;
    while next <= users {
        let end = (next + 10_000).min(users + 1);
        let batch: Vec<Document> = (next..end).map(|n| user_doc(n, &mut rng)).collect();
        coll.insert_many(batch).await.map_err(mongo_err)?;
        next = end;
    }
    let index = mongodb::IndexModel::builder()
        .keys(doc! { "_Uid": 1 })
        .options(
            mongodb::options::IndexOptions::builder()
                .unique(true)
                .build(),
        )
        .build();
    coll.create_index(index).await.map_err(mongo_err)?;
    Ok(TableLoad {
        system: "mongodb",
        table: "users",
        rows: users,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `savings_plan` (0–2 per user, ~1 on average) and `savings_transaction` (0–40
/// per plan, ~20 on average).
async fn generate_savings(url: &str, users: u64, seed: u64) -> Result<Vec<TableLoad>> {
    let client = pg_connect(url).await?;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS savings_transaction, savings_plan;
             CREATE TABLE savings_plan (
                 plan_id bigint NOT NULL, user_id text NOT NULL, plan_name text NOT NULL,
                 target_amount numeric(18, 2) NOT NULL, frequency text NOT NULL,
                 status text NOT NULL, start_date date NOT NULL, end_date date,
                 created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
                 deleted_at timestamptz);
             CREATE TABLE savings_transaction (
                 transaction_id bigint NOT NULL, plan_id bigint NOT NULL, user_id text NOT NULL,
                 amount numeric(18, 2) NOT NULL, currency text NOT NULL, side text NOT NULL,
                 created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
                 deleted_at timestamptz);",
        )
        .await
        .map_err(pg_err("savings_plan"))?;
    let stamps = Stamps::new();
    let mut loads = Vec::new();

    // Plans: (user, created second) kept for the transactions (16 bytes a plan).
    let started = Instant::now();
    let mut plans: Vec<(u64, u64)> = Vec::with_capacity(users as usize + 16);
    let mut rng = Rng(seed ^ 0x504c_414e);
    let mut copy = CopyIn::start(&client, "savings_plan").await?;
    for user in 1..=users {
        for _ in 0..rng.below(3) {
            let id = plans.len() as u64 + 1;
            let created = rng.below(PLAN_SPAN_SECS);
            let updated = created + rng.below(TX_SPAN_SECS);
            plans.push((user, created));
            let b = &mut copy.buf;
            let _ = write!(
                b,
                "{id}\t{}\t{}\t{}.00\t{}\t{}\t",
                uid(user),
                rng.pick(&PLAN_NAMES),
                (1 + rng.below(200)) * 5_000,
                rng.pick(&FREQUENCIES),
                rng.pick(&PLAN_STATUS)
            );
            b.extend_from_slice(&stamps.0[(created / 86_400) as usize].as_bytes()[..10]);
            b.push(b'\t');
            b.extend_from_slice(stamps.0[(created / 86_400 + 90) as usize].as_bytes());
            b.push(b'\t');
            stamps.write(b, created);
            b.push(b'\t');
            stamps.write(b, updated);
            b.push(b'\t');
            // 1% of the plans are soft-deleted already.
            if rng.below(100) == 0 {
                stamps.write(b, updated);
                b.push(b'\n');
            } else {
                b.extend_from_slice(b"\\N\n");
            }
            copy.flush_if_full().await?;
        }
    }
    copy.finish().await?;
    client
        .batch_execute(
            "ALTER TABLE savings_plan ADD PRIMARY KEY (plan_id);
             CREATE INDEX ON savings_plan (updated_at);",
        )
        .await
        .map_err(pg_err("savings_plan"))?;
    loads.push(TableLoad {
        system: "postgres",
        table: "savings_plan",
        rows: plans.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    });

    let started = Instant::now();
    let mut rng = Rng(seed ^ 0x5452_414e);
    let mut copy = CopyIn::start(&client, "savings_transaction").await?;
    let mut id = 0u64;
    for (plan, &(user, plan_created)) in plans.iter().enumerate() {
        let user = uid(user);
        for _ in 0..rng.below(41) {
            id += 1;
            let created = plan_created + rng.below(TX_SPAN_SECS);
            let withdrawal = rng.below(5) == 0;
            let cents = 100 + rng.below(5_000_000);
            let b = &mut copy.buf;
            let _ = write!(
                b,
                "{id}\t{}\t{user}\t{}.{:02}\tNGN\t{}\t",
                plan + 1,
                cents / 100,
                cents % 100,
                if withdrawal { "withdrawal" } else { "deposit" }
            );
            stamps.write(b, created);
            b.push(b'\t');
            stamps.write(b, created + rng.below(600));
            b.extend_from_slice(b"\t\\N\n");
            copy.flush_if_full().await?;
        }
    }
    copy.finish().await?;
    client
        .batch_execute(
            "ALTER TABLE savings_transaction ADD PRIMARY KEY (transaction_id);
             CREATE INDEX ON savings_transaction (updated_at);
             ANALYZE savings_plan; ANALYZE savings_transaction;",
        )
        .await
        .map_err(pg_err("savings_transaction"))?;
    loads.push(TableLoad {
        system: "postgres",
        table: "savings_transaction",
        rows: id,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(loads)
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

fn wallet_stamp(secs: u64) -> String {
    let (y, m, d) = EPOCH_DAY;
    let start = chrono::NaiveDate::from_ymd_opt(y, m, d)
        .expect("valid epoch")
        .and_hms_opt(0, 0, 0)
        .expect("midnight");
    (start + chrono::TimeDelta::seconds(secs as i64))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn generate_wallet(url: &str, sizes: Sizes, seed: u64) -> Result<Vec<TableLoad>> {
    let mut conn = mysql_connect(url)?;
    conn.query_drop(
        "DROP TABLE IF EXISTS transactions, merchants, users;
         CREATE TABLE users (user_id BIGINT PRIMARY KEY, full_name VARCHAR(64) NOT NULL,
             email VARCHAR(64) NOT NULL, state VARCHAR(32), created_at DATETIME NOT NULL,
             updated_at DATETIME NOT NULL, KEY (updated_at));
         CREATE TABLE merchants (merchant_id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL,
             category VARCHAR(32) NOT NULL, created_at DATETIME NOT NULL,
             updated_at DATETIME NOT NULL, KEY (updated_at));
         CREATE TABLE transactions (transaction_id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL,
             merchant_id BIGINT NOT NULL, amount DECIMAL(12, 2) NOT NULL,
             status VARCHAR(8) NOT NULL, transaction_time DATETIME NOT NULL,
             updated_at DATETIME NOT NULL, KEY (updated_at));",
    )
    .map_err(mysql_err("transactions"))?;
    let mut rng = Rng(seed);
    let mut loads = Vec::new();
    let mut timed = |table: &'static str, rows: u64, f: &mut dyn FnMut() -> Result<()>| {
        let started = Instant::now();
        f()?;
        loads.push(TableLoad {
            system: "mysql",
            table,
            rows,
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok::<_, Error>(())
    };
    timed("users", sizes.wallet_users, &mut || {
        let rows = (1..=sizes.wallet_users).map(|id| {
            let at = wallet_stamp(rng.below(PLAN_SPAN_SECS));
            format!(
                "({id},'{} {}','user{id}@example.com','{}','{at}','{at}')",
                rng.pick(&FIRST),
                rng.pick(&LAST),
                rng.pick(&STATES)
            )
        });
        insert_rows(&mut conn, "users", rows)
    })?;
    timed("merchants", sizes.wallet_merchants, &mut || {
        let rows = (1..=sizes.wallet_merchants).map(|id| {
            let at = wallet_stamp(rng.below(PLAN_SPAN_SECS));
            format!(
                "({id},'Merchant {id}','{}','{at}','{at}')",
                rng.pick(&["grocery", "transport", "airtime", "utilities", "fashion"])
            )
        });
        insert_rows(&mut conn, "merchants", rows)
    })?;
    let span = (PLAN_SPAN_SECS / sizes.wallet_transactions).max(1);
    let (users, merchants) = (sizes.wallet_users, sizes.wallet_merchants);
    let mut tx_rng = Rng(seed ^ 0x5458);
    timed("transactions", sizes.wallet_transactions, &mut || {
        let rows = (1..=sizes.wallet_transactions).map(|id| {
            let at = wallet_stamp(id * span);
            let status = match tx_rng.below(10) {
                0 => "FAILED",
                1 => "PENDING",
                _ => "SUCCESS",
            };
            let cents = tx_rng.below(500_000);
            format!(
                "({id},{},{},{}.{:02},'{status}','{at}','{at}')",
                1 + tx_rng.below(users),
                1 + tx_rng.below(merchants),
                cents / 100,
                cents % 100
            )
        });
        insert_rows(&mut conn, "transactions", rows)
    })?;
    Ok(loads)
}

/// How many changes one `simulate` call makes at scale 1 (scaled like the data).
#[derive(Debug, Clone, Copy)]
pub struct ChangeCounts {
    pub users_insert: u64,
    pub users_update: u64,
    pub users_delete: u64,
    pub plans_insert: u64,
    pub plans_update: u64,
    pub plans_soft_delete: u64,
    pub transactions_insert: u64,
    pub transactions_update: u64,
    pub wallet_transactions_insert: u64,
    pub wallet_transactions_update: u64,
}

impl ChangeCounts {
    pub fn at(scale: f64) -> ChangeCounts {
        let n = |base: f64| ((base * scale).round() as u64).max(1);
        ChangeCounts {
            users_insert: n(500.0),
            users_update: n(1_000.0),
            users_delete: n(100.0),
            plans_insert: n(500.0),
            plans_update: n(1_000.0),
            plans_soft_delete: n(200.0),
            transactions_insert: n(10_000.0),
            transactions_update: n(2_000.0),
            wallet_transactions_insert: n(1_000.0),
            wallet_transactions_update: n(500.0),
        }
    }
}

/// One line of what `simulate` did: `table op count first..last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: &'static str,
    pub op: &'static str,
    pub count: u64,
    pub first: String,
    pub last: String,
}

/// `count` distinct numbers in `1..=max`, sorted.
fn distinct(rng: &mut Rng, max: u64, count: u64) -> Vec<u64> {
    let count = count.min(max);
    let mut seen = HashSet::new();
    while (seen.len() as u64) < count {
        seen.insert(1 + rng.below(max));
    }
    let mut ids: Vec<u64> = seen.into_iter().collect();
    ids.sort_unstable();
    ids
}

/// Splits `ids` into two disjoint sorted sets of `a` and the rest.
fn split(rng: &mut Rng, mut ids: Vec<u64>, a: usize) -> (Vec<u64>, Vec<u64>) {
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut rest = ids.split_off(a.min(ids.len()));
    ids.sort_unstable();
    rest.sort_unstable();
    (ids, rest)
}

fn change(table: &'static str, op: &'static str, count: u64, ids: &[String]) -> Change {
    Change {
        table,
        op,
        count,
        first: ids.first().cloned().unwrap_or_else(|| "-".into()),
        last: ids.last().cloned().unwrap_or_else(|| "-".into()),
    }
}

/// Applies one round of changes and writes `table op count first..last` lines.
/// The seed is mixed with the current sizes, so every call changes other rows.
pub async fn simulate<W: Write>(
    services: &Services,
    scale: f64,
    seed: u64,
    mut out: W,
) -> Result<Vec<Change>> {
    let counts = ChangeCounts::at(scale);
    let mut changes = simulate_users(&services.mongodb, counts, seed).await?;
    changes.extend(simulate_savings(&services.postgres, counts, seed).await?);
    let url = services.mysql.clone();
    changes.extend(
        tokio::task::spawn_blocking(move || simulate_wallet(&url, counts, seed))
            .await
            .map_err(|e| Error::source("transactions", e))??,
    );
    for c in &changes {
        writeln!(
            out,
            "{:<22} {:<12} {:>8}  {}..{}",
            c.table, c.op, c.count, c.first, c.last
        )
        .map_err(|e| Error::Query(e.to_string()))?;
    }
    Ok(changes)
}

async fn simulate_users(url: &str, counts: ChangeCounts, seed: u64) -> Result<Vec<Change>> {
    let coll = mongo_users(url).await?;
    let last = coll
        .find_one(doc! {})
        .sort(doc! { "_Uid": -1 })
        .projection(doc! { "_Uid": 1 })
        .await
        .map_err(mongo_err)?;
    let max = last
        .as_ref()
        .and_then(|d| d.get_str("_Uid").ok())
        .and_then(|u| u.trim_start_matches("UID").parse::<u64>().ok())
        .unwrap_or(0);
    let mut rng = Rng(seed ^ max.rotate_left(32) ^ 0x5349_4d55);
    let picked = distinct(&mut rng, max, counts.users_update + counts.users_delete);
    let (update, delete) = split(&mut rng, picked, counts.users_update as usize);
    let uids = |ids: &[u64]| ids.iter().map(|&n| uid(n)).collect::<Vec<_>>();

    // Updates move a user to the next state, so the document always changes.
    let (update, delete) = (uids(&update), uids(&delete));
    let mut cursor = coll
        .find(doc! { "_Uid": { "$in": &update } })
        .projection(doc! { "_Uid": 1, "state": 1 })
        .await
        .map_err(mongo_err)?;
    let mut moves: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    use futures::TryStreamExt;
    while let Some(d) = cursor.try_next().await.map_err(mongo_err)? {
        let state = d.get_str("state").unwrap_or("");
        let i = STATES.iter().position(|s| *s == state).map_or(0, |i| i + 1);
        moves
            .entry(STATES[i % STATES.len()])
            .or_default()
            .push(d.get_str("_Uid").unwrap_or("").to_string());
    }
    let mut updated = Vec::new();
    let mut modified = 0;
    for (state, ids) in moves {
        let r = coll
            .update_many(
                doc! { "_Uid": { "$in": &ids } },
                doc! { "$set": { "state": state } },
            )
            .await
            .map_err(mongo_err)?;
        modified += r.modified_count;
        updated.extend(ids);
    }
    updated.sort();
    let deleted = coll
        .delete_many(doc! { "_Uid": { "$in": &delete } })
        .await
        .map_err(mongo_err)?
        .deleted_count;
    let inserted: Vec<u64> = (max + 1..=max + counts.users_insert).collect();
    let docs: Vec<Document> = inserted.iter().map(|&n| user_doc(n, &mut rng)).collect();
    coll.insert_many(docs).await.map_err(mongo_err)?;
    Ok(vec![
        change("users", "insert", inserted.len() as u64, &uids(&inserted)),
        change("users", "update", modified, &updated),
        change("users", "delete", deleted, &delete),
    ])
}

async fn simulate_savings(url: &str, counts: ChangeCounts, seed: u64) -> Result<Vec<Change>> {
    let mut client = pg_connect(url).await?;
    let err = pg_err("savings_plan");
    let row = client
        .query_one(
            "SELECT (SELECT coalesce(max(plan_id), 0) FROM savings_plan),
                    (SELECT coalesce(max(transaction_id), 0) FROM savings_transaction)",
            &[],
        )
        .await
        .map_err(&err)?;
    let (max_plan, max_tx) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
    let mut rng = Rng(seed ^ max_tx.rotate_left(24) ^ max_plan ^ 0x5341_5649);
    let tx = client.transaction().await.map_err(&err)?;
    let as_i64 = |ids: &[u64]| ids.iter().map(|&n| n as i64).collect::<Vec<i64>>();
    let text = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>();

    // Plans: disjoint updates and soft deletes among the live ones, then inserts.
    let picked = distinct(
        &mut rng,
        max_plan,
        counts.plans_update + counts.plans_soft_delete,
    );
    let (update, delete) = split(&mut rng, picked, counts.plans_update as usize);
    let updated = tx
        .query(
            "UPDATE savings_plan SET target_amount = target_amount + 1000,
                    status = CASE status WHEN 'active' THEN 'paused' ELSE 'active' END,
                    updated_at = clock_timestamp()
             WHERE plan_id = ANY($1) AND deleted_at IS NULL RETURNING plan_id",
            &[&as_i64(&update)],
        )
        .await
        .map_err(&err)?;
    let deleted = tx
        .query(
            "UPDATE savings_plan SET deleted_at = clock_timestamp(), updated_at = clock_timestamp()
             WHERE plan_id = ANY($1) AND deleted_at IS NULL RETURNING plan_id",
            &[&as_i64(&delete)],
        )
        .await
        .map_err(&err)?;
    let ids_of = |rows: &[tokio_postgres::Row]| {
        let mut ids: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        ids.sort_unstable();
        text(&ids)
    };
    let new_plans: Vec<u64> = (max_plan + 1..=max_plan + counts.plans_insert).collect();
    let plan_users: Vec<String> = new_plans
        .iter()
        .map(|_| uid(1 + rng.below(max_plan.max(1))))
        .collect();
    tx.execute(
        "INSERT INTO savings_plan
         SELECT id, u, 'Plan ' || id, 10000 + (id % 100) * 500, 'monthly', 'active',
                current_date, current_date + 90, clock_timestamp(), clock_timestamp(), NULL
         FROM unnest($1::bigint[], $2::text[]) AS t(id, u)",
        &[&as_i64(&new_plans), &plan_users],
    )
    .await
    .map_err(&err)?;

    // Transactions: updates among the existing ones, inserts on random plans.
    let err = pg_err("savings_transaction");
    let update_tx = distinct(&mut rng, max_tx, counts.transactions_update);
    let updated_tx = tx
        .query(
            "UPDATE savings_transaction SET amount = amount + 1, updated_at = clock_timestamp()
             WHERE transaction_id = ANY($1) AND deleted_at IS NULL RETURNING transaction_id",
            &[&as_i64(&update_tx)],
        )
        .await
        .map_err(&err)?;
    let new_tx: Vec<u64> = (max_tx + 1..=max_tx + counts.transactions_insert).collect();
    let tx_plans: Vec<i64> = new_tx
        .iter()
        .map(|_| 1 + rng.below(max_plan + counts.plans_insert) as i64)
        .collect();
    tx.execute(
        "INSERT INTO savings_transaction
         SELECT t.id, t.plan_id, p.user_id, 100 + (t.id * 7919) % 500000 / 100.0, 'NGN',
                CASE WHEN t.id % 5 = 0 THEN 'withdrawal' ELSE 'deposit' END,
                clock_timestamp(), clock_timestamp(), NULL
         FROM unnest($1::bigint[], $2::bigint[]) AS t(id, plan_id)
         JOIN savings_plan p USING (plan_id)",
        &[&as_i64(&new_tx), &tx_plans],
    )
    .await
    .map_err(&err)?;
    tx.commit().await.map_err(&err)?;
    Ok(vec![
        change(
            "savings_plan",
            "insert",
            new_plans.len() as u64,
            &text(&new_plans),
        ),
        change(
            "savings_plan",
            "update",
            updated.len() as u64,
            &ids_of(&updated),
        ),
        change(
            "savings_plan",
            "soft_delete",
            deleted.len() as u64,
            &ids_of(&deleted),
        ),
        change(
            "savings_transaction",
            "insert",
            new_tx.len() as u64,
            &text(&new_tx),
        ),
        change(
            "savings_transaction",
            "update",
            updated_tx.len() as u64,
            &ids_of(&updated_tx),
        ),
    ])
}

fn simulate_wallet(url: &str, counts: ChangeCounts, seed: u64) -> Result<Vec<Change>> {
    let mut conn = mysql_connect(url)?;
    let err = mysql_err("transactions");
    let sizes: Option<(u64, u64, u64)> = conn
        .query_first(
            "SELECT (SELECT coalesce(max(transaction_id), 0) FROM transactions),
                    (SELECT count(*) FROM users), (SELECT count(*) FROM merchants)",
        )
        .map_err(&err)?;
    let (max_tx, users, merchants) = sizes.unwrap_or_default();
    let mut rng = Rng(seed ^ max_tx.rotate_left(16) ^ 0x5741_4c4c);
    // Updates settle pending transactions (or retry failed ones): the status changes.
    let update = distinct(&mut rng, max_tx, counts.wallet_transactions_update);
    let list = update
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    conn.query_drop(format!(
        "UPDATE transactions SET status = IF(status = 'SUCCESS', 'FAILED', 'SUCCESS'),
                updated_at = UTC_TIMESTAMP() WHERE transaction_id IN ({list})"
    ))
    .map_err(&err)?;
    let updated = conn.affected_rows();
    let new: Vec<u64> = (max_tx + 1..=max_tx + counts.wallet_transactions_insert).collect();
    let rows: Vec<String> = new
        .iter()
        .map(|id| {
            let cents = rng.below(500_000);
            format!(
                "({id},{},{},{}.{:02},'PENDING',UTC_TIMESTAMP(),UTC_TIMESTAMP())",
                1 + rng.below(users.max(1)),
                1 + rng.below(merchants.max(1)),
                cents / 100,
                cents % 100
            )
        })
        .collect();
    insert_rows(&mut conn, "transactions", rows.into_iter())?;
    let text = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>();
    Ok(vec![
        change(
            "wallet_transactions",
            "insert",
            new.len() as u64,
            &text(&new),
        ),
        change("wallet_transactions", "update", updated, &text(&update)),
    ])
}
