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

/// In `sluice run` the models run beside the tables: a model whose tables are
/// committed runs, and one that reads a table that failed is skipped, naming it,
/// with what depends on it; the run fails with the table's error.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_runs_once_its_tables_commit_and_is_skipped_when_one_fails() {
    let name = unique("models_tables_fail");
    let pg = PgDb::create(&name).await;
    pg.exec(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount bigint NOT NULL,
                              created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
         INSERT INTO orders SELECT g, g * 10, timestamptz '2026-01-05 00:00:00+00' + g * interval '7 hours',
                                   timestamptz '2026-01-10 00:00:00+00' FROM generate_series(1, 20) g;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(
        models.join("order_totals.sql"),
        "SELECT count(*) AS orders, sum(amount) AS amount FROM orders",
    )
    .unwrap();
    std::fs::write(models.join("from_missing.sql"), "SELECT id FROM missing").unwrap();
    std::fs::write(
        models.join("after_missing.sql"),
        "SELECT id FROM from_missing",
    )
    .unwrap();
    let table = |table: &str, source_table: &str| {
        format!(
            "[[table]]\nname = \"{table}\"\nsource = \"app\"\nsource_table = \"{source_table}\"\n\
             cursor = \"updated_at\"\nkey = [\"id\"]\npartition_by = \"created_at\"\n"
        )
    };
    let text = format!(
        "[lake]\nurl = \"{lake}\"\n\n[sources.app]\nkind = \"postgres\"\nurl = \"{url}\"\n\n{missing}\n{orders}\n\
         [models]\npath = \"{models}\"\n",
        lake = dir.path().join("lake").display(),
        url = pg.url,
        // First in the config: it fails before the other table commits.
        missing = table("missing", "public.no_such_table"),
        orders = table("orders", "public.orders"),
        models = models.display(),
    );
    let config = sluice::Config::from_toml(&text, &|_| None).unwrap();
    let options = sluice::run::RunOptions {
        jobs: 2,
        ..Default::default()
    };
    let err = sluice::run::run(&config, dir.path(), &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_table"), "{err}");

    let lake = sluice::lake::Lake::open(&config.lake, dir.path()).unwrap();
    let runs = lake.list("_sluice/runs").await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("lake/_sluice/runs").join(&runs[0].0)).unwrap(),
    )
    .unwrap();
    let model = |name: &str| {
        report["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == name)
            .unwrap_or_else(|| panic!("{name} not in {report:#}"))
            .clone()
    };
    assert_eq!(model("order_totals")["status"], "published", "{report:#}");
    assert_eq!(model("order_totals")["rows"], 1);
    assert_eq!(model("from_missing")["status"], "skipped");
    assert_eq!(
        model("from_missing")["error"],
        "not run: table missing failed or did not run"
    );
    assert_eq!(model("after_missing")["status"], "skipped");
    assert_eq!(report["tables"][0]["table"], "orders", "{report:#}");

    // The model read the run's commit of orders: its 20 rows.
    let totals = lake.read_manifest("order_totals").await.unwrap().unwrap();
    assert_eq!(totals.rows(), 1);
    let session = sluice::query::LakeSession::open(&config, dir.path())
        .await
        .unwrap();
    let batches: Vec<arrow::record_batch::RecordBatch> = futures::TryStreamExt::try_collect(
        session
            .execute(
                "SELECT CAST(orders AS BIGINT) AS o, CAST(amount AS BIGINT) AS a FROM order_totals",
            )
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string(),
        "+----+------+\n| o  | a    |\n+----+------+\n| 20 | 2100 |\n+----+------+"
    );
    pg.drop().await;
}
