//! PostgreSQL e-wallet → `sluice run` (tables, then the SQL models of
//! `sql/ewallet`) → ClickHouse: every mart in ClickHouse equals what DataFusion
//! computed into the lake, after the first run and after a rerun.

mod common;

use common::*;

/// The example config, pointed at this test's database, lake prefix and
/// ClickHouse database.
fn config(pg_url: &str, prefix: &str, ch_db: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/examples/ewallet.toml")).unwrap();
    let replace = |text: String, from: &str, to: &str| {
        assert!(text.contains(from), "examples/ewallet.toml has no {from:?}");
        text.replace(from, to)
    };
    let text = replace(
        text,
        "url = \"s3://lake/ewallet\"",
        &format!("url = \"s3://{}/{prefix}\"", s3_bucket()),
    );
    let text = replace(
        text,
        "url = \"postgres://sluice:${EWALLET_PG_PASSWORD}@127.0.0.1:5432/ewallet\"",
        &format!("url = \"{pg_url}\""),
    );
    let text = replace(
        text,
        "url = \"http://127.0.0.1:8123\"\ndatabase = \"ewallet\"",
        &format!(
            "url = \"{}\"\ndatabase = \"{ch_db}\"\ns3_endpoint = \"{}\"",
            clickhouse_url(),
            clickhouse_s3_endpoint()
        ),
    );
    let text = replace(text, "password = \"${CLICKHOUSE_PASSWORD}\"\n", "");
    replace(
        text,
        "path = \"../sql/ewallet\"",
        &format!("path = \"{root}/sql/ewallet\""),
    )
}

/// Each mart as comparable text lines: (model, DataFusion SQL, ClickHouse SQL).
/// Amounts in cents as integers, dates as text, NULLs as '-'.
fn marts(ch_db: &str) -> Vec<(&'static str, String, String)> {
    vec![
        (
            "fact_sales",
            "SELECT transaction_id, user_key, merchant_key, CAST(amount * 100 AS BIGINT), \
             amount_category, CAST(transaction_date AS VARCHAR) FROM fact_sales ORDER BY 1"
                .into(),
            format!(
                "SELECT transaction_id, user_key, merchant_key, toInt64(amount * 100), \
                 amount_category, toString(transaction_date) FROM `{ch_db}`.fact_sales ORDER BY 1"
            ),
        ),
        (
            "user_daily_amount",
            "SELECT user_id, CAST(transaction_date AS VARCHAR), user_key, \
             CAST(total_amount * 100 AS BIGINT), transaction_count FROM user_daily_amount \
             ORDER BY 1, 2"
                .into(),
            format!(
                "SELECT user_id, toString(transaction_date), user_key, \
                 toInt64(total_amount * 100), transaction_count FROM `{ch_db}`.user_daily_amount \
                 ORDER BY 1, 2"
            ),
        ),
        (
            "merchant_transaction_count",
            "SELECT merchant_id, merchant_key, merchant_name, category, transaction_count \
             FROM merchant_transaction_count ORDER BY 1"
                .into(),
            format!(
                "SELECT merchant_id, merchant_key, merchant_name, category, transaction_count \
                 FROM `{ch_db}`.merchant_transaction_count ORDER BY 1"
            ),
        ),
        (
            "dim_users",
            "SELECT user_id, user_key, full_name, email, COALESCE(state, '-') FROM dim_users \
             ORDER BY 1"
                .into(),
            format!(
                "SELECT user_id, user_key, full_name, email, ifNull(state, '-') \
                 FROM `{ch_db}`.dim_users ORDER BY 1"
            ),
        ),
        (
            "dim_merchants",
            "SELECT merchant_id, merchant_key, merchant_name, category FROM dim_merchants \
             ORDER BY 1"
                .into(),
            format!(
                "SELECT merchant_id, merchant_key, merchant_name, category \
                 FROM `{ch_db}`.dim_merchants ORDER BY 1"
            ),
        ),
    ]
}

/// Rows of a `sluice query` over the lake as `|`-separated lines.
fn lake_lines(config: &std::path::Path, sql: &str) -> Vec<String> {
    let out = sluice(
        &[
            "query",
            "--config",
            config.to_str().unwrap(),
            "--format",
            "csv",
            sql,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "sluice query {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.replace(',', "|"))
        .collect()
}

async fn assert_marts_equal(config: &std::path::Path, ch_db: &str) {
    for (model, lake_sql, ch_sql) in marts(ch_db) {
        let lake = lake_lines(config, &lake_sql);
        let warehouse = ch_lines(&ch_sql).await;
        assert!(!lake.is_empty(), "{model} is empty");
        assert_eq!(lake.len(), warehouse.len(), "{model}: row counts differ");
        assert!(
            lake == warehouse,
            "{model}: first difference: lake {:?} vs ClickHouse {:?}",
            lake.iter().zip(&warehouse).find(|(a, b)| a != b),
            ()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ewallet_marts_in_clickhouse_equal_datafusion() {
    let name = unique("models_e2e");
    let pg = PgDb::create(&name).await;
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/ewallet_seed.sql"
    ))
    .unwrap()
    // A smaller night than the demo's: the same shapes, faster.
    .replace(
        "generate_series(1::bigint, 50000)",
        "generate_series(1::bigint, 3000)",
    );
    pg.exec(&seed).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config(&pg.url, &name, &name));

    let out = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || sluice_run_ok(&cfg)
    })
    .await
    .unwrap();
    for model in [
        "dim_users",
        "dim_merchants",
        "fact_sales",
        "user_daily_amount",
        "merchant_transaction_count",
    ] {
        assert!(out.contains(model), "{model} not in the report:\n{out}");
    }
    assert_marts_equal(&cfg, &name).await;
    // Only successful transactions reach the fact table.
    let source = pg
        .lines("SELECT count(*)::text FROM transactions WHERE status = 'SUCCESS'")
        .await;
    let facts = ch_lines(&format!("SELECT count() FROM `{name}`.fact_sales")).await;
    assert_eq!(source, facts);

    // `sluice models` rebuilds the marts from the same lake: ClickHouse still
    // equals them (partitions replaced, not appended).
    let out = sluice(&["models", "--config", cfg.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "sluice models: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_marts_equal(&cfg, &name).await;

    ch_exec(&format!("DROP DATABASE IF EXISTS `{name}`")).await;
    pg.drop().await;
}
