//! Every lake table keeps its history as Delta versions: `sluice query --as-of`
//! reads a watermark table and a model as of an older version or an instant
//! (and as of a day, a day of the data, as they are now); the replaced files stay for `keep_versions_days` and go after it; and
//! a version that cannot be read says why.

mod common;

use std::path::Path;

use common::*;

fn config(lake: &Path, models: &Path, pg_url: &str, keep_versions_days: u32) -> String {
    format!(
        r#"
[lake]
url = "{lake}"
keep_versions_days = {keep_versions_days}

[sources.app]
kind = "postgres"
url = "{pg_url}"

[[table]]
name = "orders"
source = "app"
source_table = "orders"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"

[models]
path = "{models}"
"#,
        lake = lake.display(),
        models = models.display(),
    )
}

fn query(cfg: &Path, as_of: Option<&str>, sql: &str) -> std::process::Output {
    let mut args = vec![
        "query",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "csv",
    ];
    if let Some(when) = as_of {
        args.extend(["--as-of", when]);
    }
    args.push(sql);
    sluice(&args, &[])
}

fn query_ok(cfg: &Path, as_of: Option<&str>, sql: &str) -> String {
    let out = query(cfg, as_of, sql);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The newest Delta version of a table of a local lake.
fn latest_version(table: &Path) -> u64 {
    std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max()
        .unwrap()
}

fn parquet_files(dir: &Path) -> usize {
    walk(dir)
        .iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && !p.to_string_lossy().contains("_delta_log")
        })
        .count()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

const TOTAL: &str = "SELECT count(*) AS n, sum(amount) AS amount FROM orders";
const MODEL: &str = "SELECT orders, amount FROM order_totals";

#[tokio::test(flavor = "multi_thread")]
async fn tables_and_models_read_as_of_a_version_an_instant_and_a_day() {
    let name = unique("time_travel");
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
    let lake = dir.path().join("lake");
    let cfg = write_config(&dir, &config(&lake, &models, &pg.url, 7));
    tokio::task::block_in_place(|| sluice_run_ok(&cfg));
    let first_orders = latest_version(&lake.join("orders"));
    let first_model = latest_version(&lake.join("order_totals"));
    let between = chrono::Utc::now();
    let first = tokio::task::block_in_place(|| query_ok(&cfg, None, TOTAL));
    assert_eq!(first, "n,amount\n20,2100\n");

    // One order changes, one is new: the changed day is rewritten, and the
    // model is rebuilt.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pg.exec(
        "UPDATE orders SET amount = 1000, updated_at = timestamptz '2026-01-11 00:00:00+00' WHERE id = 3;
         INSERT INTO orders VALUES (21, 5, timestamptz '2026-01-05 01:00:00+00', timestamptz '2026-01-11 00:00:00+00');",
    )
    .await;
    let files_before = parquet_files(&lake.join("orders"));
    tokio::task::block_in_place(|| sluice_run_ok(&cfg));
    assert!(
        parquet_files(&lake.join("orders")) > files_before,
        "the replaced files stay for time travel"
    );
    let now = tokio::task::block_in_place(|| query_ok(&cfg, None, TOTAL));
    assert_eq!(now, "n,amount\n21,3075\n");
    assert_eq!(
        tokio::task::block_in_place(|| query_ok(&cfg, None, MODEL)),
        "orders,amount\n21,3075\n"
    );

    // As of the instant between the runs: both as after the first run.
    let instant = between.to_rfc3339();
    assert_eq!(
        tokio::task::block_in_place(|| query_ok(&cfg, Some(&instant), TOTAL)),
        first
    );
    assert_eq!(
        tokio::task::block_in_place(|| query_ok(&cfg, Some(&instant), MODEL)),
        "orders,amount\n20,2100\n"
    );
    // As of a version: each table's own log.
    assert_eq!(
        tokio::task::block_in_place(|| query_ok(&cfg, Some(&first_orders.to_string()), TOTAL)),
        first
    );
    assert_eq!(
        tokio::task::block_in_place(|| query_ok(&cfg, Some(&first_model.to_string()), MODEL)),
        "orders,amount\n20,2100\n"
    );
    // As of a day (a day of the data): a watermark table reads as it is now.
    assert_eq!(
        tokio::task::block_in_place(|| query_ok(&cfg, Some("2026-01-05"), TOTAL)),
        now
    );
    // Before the first commit, and a version that does not exist: the error
    // names the table and why.
    for when in ["2000-01-01T00:00:00Z", "999"] {
        let out = tokio::task::block_in_place(|| query(&cfg, Some(when), TOTAL));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{stderr}");
        assert!(
            stderr.contains("table orders has no version as of"),
            "{stderr}"
        );
    }
    let out = tokio::task::block_in_place(|| query(&cfg, Some("yesterday"), TOTAL));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a day"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With no history kept, the next commit deletes every replaced file: the
    // current version still reads, the old one says its files are gone.
    let cfg = write_config(&dir, &config(&lake, &models, &pg.url, 0));
    pg.exec("UPDATE orders SET amount = 7, updated_at = timestamptz '2026-01-12 00:00:00+00' WHERE id = 4;")
        .await;
    tokio::task::block_in_place(|| sluice_run_ok(&cfg));
    let state = table_state(lake.to_str().unwrap(), "orders").await;
    let live: usize = state["partitions"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["files"].as_array().unwrap().len())
        .sum();
    assert_eq!(parquet_files(&lake.join("orders")), live, "vacuumed");
    assert_eq!(
        tokio::task::block_in_place(|| query_ok(&cfg, None, TOTAL)),
        "n,amount\n21,3042\n"
    );
    let out = tokio::task::block_in_place(|| query(&cfg, Some(&first_orders.to_string()), TOTAL));
    assert!(!out.status.success(), "the old version's files are gone");
    pg.drop().await;
}
