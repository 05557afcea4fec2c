//! The embedded quick start: no services at all. An e-wallet SQLite database
//! (users, merchants, transactions with a status), generated deterministically from
//! a seed, is run through the real pipeline (connectorx → watermark capture →
//! Parquet lake in a local folder), then the two e-wallet report queries run over
//! the lake through `sluice query`'s engine.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::query::{OutputFormat, QueryOptions};
use crate::{Config, RunOptions};

/// What `sluice demo` builds.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Folder for the SQLite database, the config and the lake (recreated).
    pub dir: PathBuf,
    /// 1.0 = 2,000 users, 200 merchants, 50,000 transactions over 30 days.
    pub scale: f64,
    /// Seed of the generator: the same seed gives the same data.
    pub seed: u64,
}

/// Row counts of the generated source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoCounts {
    pub users: u64,
    pub merchants: u64,
    pub transactions: u64,
}

const MARKER: &str = ".sluice-demo";

/// A small deterministic generator (SplitMix64): no dependency, same stream on
/// every platform.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Writes the e-wallet source database at `path`, dated relative to `today`.
pub fn write_sqlite(
    path: &Path,
    scale: f64,
    seed: u64,
    today: chrono::NaiveDate,
) -> Result<DemoCounts> {
    let scaled = |n: f64| ((n * scale).round() as u64).max(1);
    let counts = DemoCounts {
        users: scaled(2_000.0),
        merchants: scaled(200.0),
        transactions: scaled(50_000.0),
    };
    let fail =
        |e: rusqlite::Error| Error::source("demo", format!("writing {}: {e}", path.display()));
    let _ = std::fs::remove_file(path);
    let mut db = rusqlite::Connection::open(path).map_err(fail)?;
    db.execute_batch(
        "CREATE TABLE users (user_id INTEGER PRIMARY KEY, full_name TEXT NOT NULL, email TEXT NOT NULL,
                             state TEXT, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL);
         CREATE TABLE merchants (merchant_id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL,
                                 created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL);
         CREATE TABLE transactions (transaction_id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL,
                                    merchant_id INTEGER NOT NULL, amount REAL NOT NULL, status TEXT NOT NULL,
                                    transaction_time DATETIME NOT NULL, updated_at DATETIME NOT NULL);",
    )
    .map_err(fail)?;
    let start = today.and_hms_opt(0, 0, 0).expect("midnight") - chrono::TimeDelta::days(30);
    let stamp = |t: chrono::NaiveDateTime| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let mut rng = Rng(seed);
    let tx = db.transaction().map_err(fail)?;
    {
        let mut users = tx
            .prepare("INSERT INTO users VALUES (?1, ?2, ?3, ?4, ?5, ?5)")
            .map_err(fail)?;
        for id in 1..=counts.users {
            let first = rng.pick(&[
                "Ada", "Chidi", "Ngozi", "Tunde", "Amaka", "Bola", "Emeka", "Funmi",
            ]);
            let last = rng.pick(&["Obi", "Okafor", "Adeyemi", "Balogun", "Eze", "Nwosu"]);
            let created = start - chrono::TimeDelta::days(30)
                + chrono::TimeDelta::minutes(rng.below(30 * 1440) as i64);
            users
                .execute(rusqlite::params![
                    id as i64,
                    format!("{first} {last}"),
                    format!("user{id}@example.com"),
                    rng.pick(&["Lagos", "Abuja", "Kano", "Oyo", "Rivers"]),
                    stamp(created)
                ])
                .map_err(fail)?;
        }
        let mut merchants = tx
            .prepare("INSERT INTO merchants VALUES (?1, ?2, ?3, ?4, ?4)")
            .map_err(fail)?;
        for id in 1..=counts.merchants {
            let created = start - chrono::TimeDelta::days(60)
                + chrono::TimeDelta::minutes(rng.below(30 * 1440) as i64);
            merchants
                .execute(rusqlite::params![
                    id as i64,
                    format!("Merchant {id}"),
                    rng.pick(&["grocery", "transport", "airtime", "utilities", "fashion"]),
                    stamp(created)
                ])
                .map_err(fail)?;
        }
        let mut transactions = tx
            .prepare("INSERT INTO transactions VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)")
            .map_err(fail)?;
        let span_seconds = 30 * 86_400 / counts.transactions.max(1);
        for id in 1..=counts.transactions {
            let status = match rng.below(10) {
                0 => "FAILED",
                1 => "PENDING",
                _ => "SUCCESS",
            };
            let at = start + chrono::TimeDelta::seconds((id * span_seconds.max(1)) as i64);
            transactions
                .execute(rusqlite::params![
                    id as i64,
                    1 + rng.below(counts.users) as i64,
                    1 + rng.below(counts.merchants) as i64,
                    (rng.below(500_000) as f64) / 100.0,
                    status,
                    stamp(at)
                ])
                .map_err(fail)?;
        }
    }
    tx.commit().map_err(fail)?;
    Ok(counts)
}

/// The pipeline file of the demo: SQLite → local-folder lake, no warehouse.
pub fn config_text(db: &Path) -> String {
    format!(
        r#"# Written by `sluice demo`: the e-wallet tables from SQLite into a local lake.
[lake]
url = "lake"

[sources.ewallet]
kind = "sqlite"
url = "sqlite://{db}"

[[table]]
name = "users"
source = "ewallet"
source_table = "users"
cursor = "updated_at"
key = ["user_id"]
partition_by = "created_at"

[[table]]
name = "merchants"
source = "ewallet"
source_table = "merchants"
cursor = "updated_at"
key = ["merchant_id"]
partition_by = "created_at"

[[table]]
name = "transactions"
source = "ewallet"
source_table = "transactions"
cursor = "updated_at"
key = ["transaction_id"]
partition_by = "transaction_time"
"#,
        db = db.display()
    )
}

/// The two e-wallet reports, as DataFusion SQL over the lake.
pub const REPORTS: [(&str, &str); 2] = [
    (
        "Total successful amount per user per day (top 5)",
        "SELECT user_id, CAST(transaction_time AS DATE) AS day, round(sum(amount), 2) AS total \
         FROM transactions WHERE status = 'SUCCESS' \
         GROUP BY user_id, CAST(transaction_time AS DATE) ORDER BY total DESC, user_id LIMIT 5",
    ),
    (
        "Transactions per merchant (top 5)",
        "SELECT m.name, count(*) AS transactions \
         FROM transactions t JOIN merchants m ON t.merchant_id = m.merchant_id \
         GROUP BY m.name ORDER BY transactions DESC, m.name LIMIT 5",
    ),
];

/// Runs the whole demo and writes what it did to `out`.
pub async fn run<W: Write>(options: &DemoOptions, mut out: W) -> Result<DemoCounts> {
    let dir = &options.dir;
    if dir.exists() {
        if !dir.join(MARKER).exists()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(Error::lake(format!(
                "{} exists and was not made by `sluice demo`; choose another --dir",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir)
            .map_err(|e| Error::lake(format!("clearing {}: {e}", dir.display())))?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::lake(format!("creating {}: {e}", dir.display())))?;
    std::fs::write(
        dir.join(MARKER),
        "made by sluice demo; deleted and rebuilt by it\n",
    )
    .map_err(|e| Error::lake(e.to_string()))?;
    let dir = dir.canonicalize().map_err(|e| Error::lake(e.to_string()))?;
    let db = dir.join("ewallet.sqlite");
    let today = chrono::Utc::now().date_naive();
    let counts = write_sqlite(&db, options.scale, options.seed, today)?;
    let write = |out: &mut W, text: String| {
        out.write_all(text.as_bytes())
            .map_err(|e| Error::Query(e.to_string()))
    };
    write(
        &mut out,
        format!(
            "SQLite source {}: {} users, {} merchants, {} transactions\n",
            db.display(),
            counts.users,
            counts.merchants,
            counts.transactions
        ),
    )?;
    let config_path = dir.join("sluice.toml");
    std::fs::write(&config_path, config_text(&db)).map_err(|e| Error::lake(e.to_string()))?;
    let (config, base) = Config::load(&config_path)?;
    for pass in ["first run (full load)", "rerun (nothing changes)"] {
        let report = crate::run(&config, &base, &RunOptions::default()).await?;
        let rows: u64 = report.tables.iter().map(|t| t.rows_changed).sum();
        let files: usize = report.tables.iter().map(|t| t.files_written).sum();
        write(
            &mut out,
            format!("{pass}: {rows} rows written in {files} Parquet files\n"),
        )?;
    }
    write(&mut out, format!("lake: {}\n", dir.join("lake").display()))?;
    for (title, sql) in REPORTS {
        write(&mut out, format!("\n{title}\n"))?;
        let options = QueryOptions {
            format: OutputFormat::Table,
            output: None,
        };
        crate::query::query(&config, &base, sql, &options, &mut out).await?;
    }
    write(
        &mut out,
        format!(
            "\nAsk your own questions:\n  sluice query --config {} \"SELECT status, count(*) FROM transactions GROUP BY status\"\n",
            config_path.display()
        ),
    )?;
    Ok(counts)
}
