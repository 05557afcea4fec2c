//! `sluice demo generate` and `sluice demo simulate` on the real services: the
//! generated sources load into a lake whose counts equal the sources', and the next
//! run after one simulate call finds exactly the changes simulate printed; and
//! examples/fintech_sources.toml as it is runs the tables then the fintech SQL
//! models into the lake and ClickHouse, whose marts match the sources.

mod common;
mod common_mysql;

use std::collections::BTreeMap;

use common::*;
use common_mysql::MyDb;
use mongodb::bson::doc;

struct Sources {
    pg: PgDb,
    my: MyDb,
    mongo_db: String,
}

impl Sources {
    fn demo(&self, args: &[&str]) -> String {
        let mongo = mongo_url(&self.mongo_db);
        let mut all = vec!["demo"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--postgres-url",
            &self.pg.url,
            "--mysql-url",
            &self.my.url,
            "--mongo-url",
            &mongo,
        ]);
        let out = sluice(&all, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "sluice {all:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn config(&self) -> String {
        format!(
            r#"
[lake]
url = "lake"

[sources.app]
kind = "mongodb"
url = "{mongo}"

[sources.savings]
kind = "postgres"
url = "{pg}"

[sources.wallet]
kind = "mysql"
url = "{my}"

[[table]]
name = "users"
source = "app"
collection = "users"
mode = "snapshot_diff"
key = ["_Uid"]

[[table]]
name = "savings_plan"
source = "savings"
source_table = "public.savings_plan"
cursor = "updated_at"
key = ["plan_id"]
partition_by = "created_at"

[[table]]
name = "savings_transaction"
source = "savings"
source_table = "public.savings_transaction"
cursor = "updated_at"
key = ["transaction_id"]
partition_by = "created_at"

[[table]]
name = "wallet_users"
source = "wallet"
source_table = "users"
cursor = "updated_at"
key = ["user_id"]
partition_by = "created_at"

[[table]]
name = "wallet_merchants"
source = "wallet"
source_table = "merchants"
cursor = "updated_at"
key = ["merchant_id"]
partition_by = "created_at"

[[table]]
name = "wallet_transactions"
source = "wallet"
source_table = "transactions"
cursor = "updated_at"
key = ["transaction_id"]
partition_by = "transaction_time"
"#,
            mongo = mongo_url(&self.mongo_db),
            pg = self.pg.url,
            my = self.my.url,
        )
    }

    /// Rows of every source table, by lake table name.
    async fn counts(&mut self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        let client = mongodb::Client::with_uri_str(mongo_url(&self.mongo_db))
            .await
            .unwrap();
        let users = client
            .database(&self.mongo_db)
            .collection::<mongodb::bson::Document>("users")
            .count_documents(doc! {})
            .await
            .unwrap();
        counts.insert("users".to_string(), users);
        for table in ["savings_plan", "savings_transaction"] {
            let n = self
                .pg
                .lines(&format!("SELECT count(*)::text FROM {table}"))
                .await;
            counts.insert(table.to_string(), n[0].parse().unwrap());
        }
        for table in ["users", "merchants", "transactions"] {
            let n = self.my.lines(&format!("SELECT count(*) FROM {table}"));
            counts.insert(format!("wallet_{table}"), n[0].parse().unwrap());
        }
        counts
    }
}

/// `sluice query --format csv`, without the header line.
fn query(config: &std::path::Path, day: &str, sql: &str) -> Vec<String> {
    let out = sluice(
        &[
            "query",
            "--config",
            config.to_str().unwrap(),
            "--format",
            "csv",
            "--as-of",
            day,
            sql,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "sluice query {sql} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

fn lake_counts(config: &std::path::Path, day: &str) -> BTreeMap<String, u64> {
    [
        "users",
        "savings_plan",
        "savings_transaction",
        "wallet_users",
        "wallet_merchants",
        "wallet_transactions",
    ]
    .into_iter()
    .map(|t| {
        let n = query(config, day, &format!("SELECT count(*) FROM {t}"));
        (t.to_string(), n[0].parse().unwrap())
    })
    .collect()
}

/// `sluice run` on a snapshot day; returns rows changed per table from its summary.
fn run_on(config: &std::path::Path, day: &str) -> BTreeMap<String, u64> {
    let out = sluice(
        &["run", "--config", config.to_str().unwrap()],
        &[("SLUICE_SNAPSHOT_DATE", day)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "sluice run failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .skip(2)
        .filter(|l| !l.starts_with(' '))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields[0].to_string(), fields[2].parse().unwrap())
        })
        .collect()
}

fn day(offset: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(offset))
        .format("%Y-%m-%d")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_run_simulate_run_matches_the_sources() {
    let name = unique("demo_gen");
    let mut sources = Sources {
        pg: PgDb::create(&name).await,
        my: MyDb::create(&name),
        mongo_db: name.clone(),
    };
    let generated = sources.demo(&["generate", "--scale", "0.001", "--seed", "7"]);
    let source_counts = sources.counts().await;
    // Scale 0.001: 150 users, 20 e-wallet users, 2 merchants, 500 e-wallet transactions.
    assert_eq!(source_counts["users"], 150, "{generated}");
    assert_eq!(source_counts["wallet_users"], 20);
    assert_eq!(source_counts["wallet_merchants"], 2);
    assert_eq!(source_counts["wallet_transactions"], 500);
    assert!(
        (100..=200).contains(&source_counts["savings_plan"]),
        "~150 plans: {source_counts:?}"
    );
    assert!(
        (2_000..=4_000).contains(&source_counts["savings_transaction"]),
        "~3,000 transactions: {source_counts:?}"
    );
    let printed_rows: BTreeMap<String, u64> = generated
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let table = match f[0] {
                "mysql" => format!("wallet_{}", f[1]),
                _ => f[1].to_string(),
            };
            (table, f[2].parse().unwrap())
        })
        .collect();
    assert_eq!(printed_rows, source_counts, "{generated}");

    // The same seed gives the same data.
    let digest = "SELECT md5(string_agg(t::text, ',' ORDER BY transaction_id))
                  FROM savings_transaction t";
    let first = sources.pg.lines(digest).await;
    sources.demo(&["generate", "--scale", "0.001", "--seed", "7"]);
    assert_eq!(sources.pg.lines(digest).await, first, "deterministic");

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &sources.config());
    let (day1, day2) = (day(-1), day(0));
    let changed = run_on(&config, &day1);
    assert_eq!(changed, source_counts, "first run loads everything");
    assert_eq!(lake_counts(&config, &day1), source_counts);

    // One simulate call; the next run finds exactly what it printed.
    let printed = sources.demo(&["simulate", "--scale", "0.01", "--seed", "7"]);
    let mut did: BTreeMap<(String, String), u64> = BTreeMap::new();
    for line in printed.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        did.insert((f[0].to_string(), f[1].to_string()), f[2].parse().unwrap());
    }
    let op = |t: &str, o: &str| did.get(&(t.to_string(), o.to_string())).copied();
    assert_eq!(op("users", "insert"), Some(5), "{printed}");
    assert_eq!(op("users", "update"), Some(10), "{printed}");
    assert_eq!(op("users", "delete"), Some(1), "{printed}");
    let sum = |t: &str| {
        did.iter()
            .filter(|((table, _), _)| table == t)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let source_counts = sources.counts().await;
    let changed = run_on(&config, &day2);
    assert_eq!(changed["users"], sum("users"), "{printed}");
    for t in ["savings_plan", "savings_transaction", "wallet_transactions"] {
        assert_eq!(changed[t], sum(t), "{t}: {printed}");
    }
    assert_eq!(changed["wallet_users"], 0);
    assert_eq!(lake_counts(&config, &day2), source_counts);

    // The change table holds one row per change of the day, by operation.
    let ops = query(
        &config,
        &day2,
        &format!(
            "SELECT _op, count(*) FROM users_changes WHERE _change_date = DATE '{day2}' \
             GROUP BY _op ORDER BY _op"
        ),
    );
    assert_eq!(
        ops,
        vec![
            format!("delete,{}", op("users", "delete").unwrap()),
            format!("insert,{}", op("users", "insert").unwrap()),
            format!("update,{}", op("users", "update").unwrap()),
        ]
    );
    // Soft deletes arrive as updates with deleted_at set.
    let soft = sources
        .pg
        .lines("SELECT count(*)::text FROM savings_plan WHERE deleted_at IS NOT NULL")
        .await;
    assert_eq!(
        query(
            &config,
            &day2,
            "SELECT count(*) FROM savings_plan WHERE deleted_at IS NOT NULL"
        ),
        soft
    );
    // The day before still reads as it was.
    assert_eq!(
        query(&config, &day1, "SELECT count(*) FROM users"),
        vec!["150".to_string()]
    );

    let client = mongodb::Client::with_uri_str(mongo_url(&name))
        .await
        .unwrap();
    let _ = client.database(&name).drop().await;
    sources.pg.drop().await;
    sources.my.drop();
}

/// examples/fintech_sources.toml pointed at this test's databases, S3 prefix and
/// ClickHouse database, with the models folder as an absolute path.
fn example_config(sources: &Sources, prefix: &str, ch_db: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/examples/fintech_sources.toml")).unwrap();
    let replace = |text: String, from: &str, to: &str| {
        assert!(
            text.contains(from),
            "examples/fintech_sources.toml has no {from:?}"
        );
        text.replace(from, to)
    };
    let text = replace(
        text,
        "url = \"s3://lake/fintech_sources\"",
        &format!("url = \"s3://{}/{prefix}\"", s3_bucket()),
    );
    let text = replace(
        text,
        "url = \"mongodb://127.0.0.1:27017/fintech?directConnection=true\"",
        &format!("url = \"{}\"", mongo_url(&sources.mongo_db)),
    );
    let text = replace(
        text,
        "url = \"postgres://sluice:${SLUICE_DEMO_PG_PASSWORD}@127.0.0.1:5432/sluice\"",
        &format!("url = \"{}\"", sources.pg.url),
    );
    let text = replace(
        text,
        "url = \"mysql://sluice:${SLUICE_DEMO_MYSQL_PASSWORD}@127.0.0.1:3306/sluice\"",
        &format!("url = \"{}\"", sources.my.url),
    );
    let text = replace(
        text,
        "url = \"http://127.0.0.1:8123\"\ndatabase = \"fintech\"",
        &format!(
            "url = \"{}\"\ndatabase = \"{ch_db}\"\ns3_endpoint = \"{}\"",
            clickhouse_url(),
            clickhouse_s3_endpoint()
        ),
    );
    replace(
        text,
        "path = \"../sql/fintech\"",
        &format!("path = \"{root}/sql/fintech\""),
    )
}

/// `sluice run` of the example on a snapshot day; panics with its output unless
/// every table and model succeeded.
fn run_example(config: &std::path::Path, day: &str) -> String {
    let out = sluice(
        &["run", "--config", config.to_str().unwrap()],
        &[("SLUICE_SNAPSHOT_DATE", day)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "sluice run failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What the fintech marts must hold, computed from the sources themselves: the
/// `_Uid` of every user in MongoDB (sorted), and from PostgreSQL the plans of
/// those users that are not soft-deleted, and the transactions (count, signed
/// sum in cents) that are not soft-deleted, of those users and of those plans.
async fn expected_marts(sources: &Sources) -> (Vec<String>, String, String) {
    let client = mongodb::Client::with_uri_str(mongo_url(&sources.mongo_db))
        .await
        .unwrap();
    let mut uids: Vec<String> = client
        .database(&sources.mongo_db)
        .collection::<mongodb::bson::Document>("users")
        .distinct("_Uid", doc! {})
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    uids.sort();
    let plans: String = sources
        .pg
        .client
        .query_one(
            "SELECT count(*)::text FROM savings_plan
             WHERE deleted_at IS NULL AND user_id = ANY($1)",
            &[&uids],
        )
        .await
        .unwrap()
        .get(0);
    let row = sources
        .pg
        .client
        .query_one(
            "SELECT count(*)::text || ',' || coalesce(sum(CASE t.side WHEN 'withdrawal'
                    THEN -t.amount ELSE t.amount END) * 100, 0)::bigint::text
             FROM savings_transaction t JOIN savings_plan p USING (plan_id)
             WHERE t.deleted_at IS NULL AND p.deleted_at IS NULL
               AND t.user_id = ANY($1) AND p.user_id = ANY($1)",
            &[&uids],
        )
        .await
        .unwrap();
    (uids, plans, row.get(0))
}

/// The marts in the lake (`sluice query`) and in ClickHouse equal what the
/// sources say they must hold; returns the number of users.
async fn assert_marts_match_sources(
    sources: &Sources,
    config: &std::path::Path,
    day: &str,
    ch_db: &str,
) -> usize {
    let (uids, plans, transactions) = expected_marts(sources).await;
    assert!(
        uids.len() > 100 && plans != "0",
        "{} users, {plans} plans",
        uids.len()
    );
    assert_eq!(
        query(config, day, "SELECT user_id FROM dim_users ORDER BY 1"),
        uids,
        "lake dim_users = the users in MongoDB"
    );
    assert_eq!(
        ch_lines(&format!(
            "SELECT user_id FROM `{ch_db}`.dim_users ORDER BY 1"
        ))
        .await,
        uids,
        "ClickHouse dim_users = the users in MongoDB"
    );
    // The model's current state agrees with ClickHouse's own (FINAL over the
    // change rows).
    assert_eq!(
        ch_lines(&format!(
            "SELECT count() FROM `{ch_db}`.users_current FINAL"
        ))
        .await,
        vec![uids.len().to_string()]
    );
    assert_eq!(
        query(config, day, "SELECT count(*) FROM dim_savings_plan"),
        vec![plans.clone()]
    );
    assert_eq!(
        ch_lines(&format!("SELECT count() FROM `{ch_db}`.dim_savings_plan")).await,
        vec![plans]
    );
    assert_eq!(
        query(
            config,
            day,
            "SELECT count(*), CAST(sum(signed_amount) * 100 AS BIGINT) \
             FROM fact_savings_transactions"
        ),
        vec![transactions.clone()],
        "lake fact = live transactions of live users and plans in PostgreSQL"
    );
    assert_eq!(
        ch_lines(&format!(
            "SELECT count(), toInt64(sum(signed_amount) * 100) \
             FROM `{ch_db}`.fact_savings_transactions"
        ))
        .await,
        vec![transactions.replace(',', "|")],
        "ClickHouse fact = live transactions of live users and plans in PostgreSQL"
    );
    uids.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn fintech_example_runs_tables_then_models_into_clickhouse() {
    let name = unique("demo_models");
    let sources = Sources {
        pg: PgDb::create(&name).await,
        my: MyDb::create(&name),
        mongo_db: name.clone(),
    };
    sources.demo(&["generate", "--scale", "0.001", "--seed", "11"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &example_config(&sources, &name, &name));

    let (day1, day2) = (day(-1), day(0));
    let out = run_example(&config, &day1);
    for model in [
        "stg_users",
        "stg_savings_plan",
        "stg_savings_transaction",
        "dim_users",
        "dim_savings_plan",
        "fact_savings_transactions",
    ] {
        assert!(out.contains(model), "{model} not in the report:\n{out}");
    }
    let users = assert_marts_match_sources(&sources, &config, &day1, &name).await;
    assert_eq!(users, 150);

    // A day of changes (users updated, inserted and deleted in MongoDB, plans
    // soft-deleted in PostgreSQL): the models follow the current state.
    let printed = sources.demo(&["simulate", "--scale", "0.01", "--seed", "11"]);
    assert!(printed.contains("users"), "{printed}");
    run_example(&config, &day2);
    let users = assert_marts_match_sources(&sources, &config, &day2, &name).await;
    assert_eq!(users, 150 + 5 - 1, "{printed}");

    ch_exec(&format!("DROP DATABASE IF EXISTS `{name}`")).await;
    let client = mongodb::Client::with_uri_str(mongo_url(&name))
        .await
        .unwrap();
    let _ = client.database(&name).drop().await;
    sources.pg.drop().await;
    sources.my.drop();
}
