//! `sluice demo generate`: creates the reference tables on the three services and
//! bulk-loads them, the three loads at once.

use std::io::Write;
use std::time::Instant;

use futures::SinkExt;
use mongodb::bson::{doc, Document};
use mysql::prelude::Queryable;

use super::{
    insert_rows, mongo_err, mongo_users, mysql_connect, mysql_err, pg_connect, pg_err, uid,
    user_doc, Services, Sizes, EPOCH_DAY, FIRST, FREQUENCIES, LAST, PLAN_NAMES, PLAN_SPAN_SECS,
    PLAN_STATUS, STATES, TX_SPAN_SECS,
};
use crate::demo::Rng;
use crate::error::{Error, Result};

/// One loaded table: where, how many rows, how long.
#[derive(Debug, Clone)]
pub struct TableLoad {
    pub system: &'static str,
    pub table: &'static str,
    pub rows: u64,
    pub seconds: f64,
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
