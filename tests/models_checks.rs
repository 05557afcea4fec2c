//! SQL models that fail: data checks, SQL errors, unknown names and cycles. A
//! failure names the model's file (and line), publishes nothing of that model, and
//! skips every model downstream of it.

mod models_support;

use models_support::*;
use sluice::lake::Lake;
use sluice::transform::{ModelStatus, ModelsOptions};

const EWALLET_CHECKS: &str = r#"
[models.model.fact_sales.checks]
not_null = ["transaction_id", "user_key", "merchant_key"]
unique = ["transaction_id"]
accepted_values = { amount_category = ["Low", "Medium"] }
relationships = [{ column = "user_key", to = "dim_users" }]
row_count = { min = 1, max = 100 }
"#;

#[tokio::test]
async fn failing_checks_publish_nothing_and_skip_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_models("ewallet", &models);
    let config = local_config(dir.path(), &models, EWALLET_CHECKS);
    let lake = Lake::open(&config.lake, dir.path()).unwrap();
    write_fixtures(&lake, &root().join("sql/ewallet")).await;
    // One more successful transaction, by a user who does not exist.
    write_sql_table(
        &lake,
        "transactions",
        Some("transaction_time"),
        "SELECT CAST(100 + column1 AS BIGINT) AS transaction_id, \
                CAST(CASE WHEN column1 = 0 THEN 99 ELSE 1 END AS BIGINT) AS user_id, \
                CAST(10 AS BIGINT) AS merchant_id, CAST(column2 AS DECIMAL(38, 10)) AS amount, \
                'SUCCESS' AS status, \
                arrow_cast(TIMESTAMP '2026-11-20 10:00:00', 'Timestamp(µs, \"+00:00\")') AS transaction_time, \
                arrow_cast(TIMESTAMP '2026-11-20 10:00:00', 'Timestamp(µs, \"+00:00\")') AS updated_at \
         FROM (VALUES (0, '10.00'), (1, '20.00'), (2, '4000.00'))",
    )
    .await;

    let err = sluice::transform::run_models(&config, dir.path(), &ModelsOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 8);
    let message = err.to_string();
    for expected in [
        "fact_sales.sql: model fact_sales: 2 check(s) failed, nothing published",
        "not_null(user_key) failed on 1 row(s)",
        "accepted_values(amount_category: Low, Medium) failed on 1 row(s)",
        "| 100            |", // the sample shows the failing row
        "skipped downstream (merchant_transaction_count, user_daily_amount)",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} not in:\n{message}"
        );
    }
    assert!(
        !message.contains("unique(transaction_id) failed"),
        "{message}"
    );
    // The dimensions were published; the fact and the reports were not.
    for published in ["dim_users", "dim_merchants"] {
        assert!(lake.read_manifest(published).await.unwrap().is_some());
    }
    for absent in [
        "fact_sales",
        "user_daily_amount",
        "merchant_transaction_count",
    ] {
        assert!(
            lake.read_manifest(absent).await.unwrap().is_none(),
            "{absent}"
        );
        let files = lake.list(absent).await.unwrap();
        assert!(files.is_empty(), "{absent} has files: {files:?}");
    }
}

#[tokio::test]
async fn a_failed_rebuild_keeps_the_published_version() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_models("ewallet", &models);
    let config = local_config(dir.path(), &models, "");
    let lake = Lake::open(&config.lake, dir.path()).unwrap();
    write_fixtures(&lake, &root().join("sql/ewallet")).await;
    let reports = sluice::transform::run_models(&config, dir.path(), &ModelsOptions::default())
        .await
        .unwrap();
    assert!(reports.iter().all(|r| r.status == ModelStatus::Published));
    let before = lake.read_manifest("fact_sales").await.unwrap().unwrap();

    let strict = local_config(
        dir.path(),
        &models,
        "[models.model.fact_sales.checks]\nrow_count = { max = 2 }\n",
    );
    let err = sluice::transform::run_models(&strict, dir.path(), &ModelsOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("row_count(-..2) failed on 6 row(s)"), "{err}");
    let after = lake.read_manifest("fact_sales").await.unwrap().unwrap();
    assert_eq!(after, before, "the published version is untouched");
    let files: Vec<String> = lake
        .list("fact_sales")
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    let live: Vec<String> = before.live_files().into_iter().map(String::from).collect();
    let mut files_sorted = files.clone();
    files_sorted.sort();
    assert_eq!(files_sorted, live, "the rejected files were deleted");
}

type Outcome = Result<Vec<sluice::transform::ModelReport>, sluice::Error>;

/// Runs the models of a folder holding `files` over the e-wallet fixtures.
async fn run_with(files: &[(&str, &str)]) -> (Outcome, tempfile::TempDir) {
    run_with_settings(files, "").await
}

/// [`run_with`], with `settings` appended to the `[models]` section.
async fn run_with_settings(files: &[(&str, &str)], settings: &str) -> (Outcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for (name, sql) in files {
        std::fs::write(models.join(name), sql).unwrap();
    }
    let config = local_config(dir.path(), &models, settings);
    let lake = Lake::open(&config.lake, dir.path()).unwrap();
    write_fixtures(&lake, &root().join("sql/ewallet")).await;
    let result =
        sluice::transform::run_models(&config, dir.path(), &ModelsOptions::default()).await;
    (result, dir)
}

#[tokio::test]
async fn relationships_and_drop_unmatched_find_orphans() {
    let sql = "SELECT transaction_id, CASE WHEN transaction_id = 100 THEN 42 ELSE user_id END AS user_id FROM transactions";
    let (result, _dir) = run_with_settings(
        &[("orphans.sql", sql)],
        "[models.model.orphans.checks]\nrelationships = [{ column = \"user_id\", to = \"users\" }]\n",
    )
    .await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("relationships(user_id → users.user_id) failed on 1 row(s)"),
        "{err}"
    );
    assert!(err.contains("| 100            | 42      |"), "{err}");

    let (result, dir) = run_with_settings(
        &[("orphans.sql", sql)],
        "[[models.model.orphans.drop_unmatched]]\ncolumn = \"user_id\"\nto = \"users\"\n",
    )
    .await;
    let reports = result.unwrap();
    assert_eq!((reports[0].rows, reports[0].rows_dropped), (7, 1));
    let lake = Lake::open(&local_config(dir.path(), dir.path(), "").lake, dir.path()).unwrap();
    assert_eq!(
        lake.read_manifest("orphans").await.unwrap().unwrap().rows(),
        7
    );
}

#[tokio::test]
async fn drop_unmatched_counts_each_dropped_row_once_and_writes_only_the_model() {
    // 100 matches neither users nor merchants, 101 has no user (NULL), 102 has an
    // unknown merchant; the other five match both.
    let sql = "SELECT transaction_id, \
               CASE WHEN transaction_id = 100 THEN 42 WHEN transaction_id = 101 THEN NULL ELSE user_id END AS user_id, \
               CASE WHEN transaction_id IN (100, 102) THEN 99 ELSE merchant_id END AS merchant_id, \
               transaction_time FROM transactions";
    let (result, dir) = run_with_settings(
        &[("orphans.sql", sql)],
        "[models.model.orphans]\npartition_by = \"transaction_time\"\n\
         [[models.model.orphans.drop_unmatched]]\ncolumn = \"user_id\"\nto = \"users\"\n\
         [[models.model.orphans.drop_unmatched]]\ncolumn = \"merchant_id\"\nto = \"merchants\"\n",
    )
    .await;
    let reports = result.unwrap();
    assert_eq!((reports[0].rows, reports[0].rows_dropped), (5, 3));
    let lake = Lake::open(&local_config(dir.path(), dir.path(), "").lake, dir.path()).unwrap();
    let manifest = lake.read_manifest("orphans").await.unwrap().unwrap();
    let columns: Vec<&str> = manifest.schema.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        columns,
        [
            "transaction_id",
            "user_id",
            "merchant_id",
            "transaction_time"
        ]
    );
    let mut kept = Vec::new();
    for file in manifest.live_files() {
        let bytes = std::fs::read(dir.path().join("lake/orphans").join(file)).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
            bytes::Bytes::from(bytes),
            1024,
        )
        .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            assert_eq!(batch.num_columns(), 4, "no marker column in the files");
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            kept.extend(ids.values().iter().copied());
        }
    }
    kept.sort_unstable();
    assert_eq!(kept, [103, 104, 105, 106, 107]);
}

#[tokio::test]
async fn syntax_error_names_file_and_line_and_nothing_runs() {
    let (result, dir) = run_with(&[
        ("good.sql", "SELECT user_id FROM users"),
        (
            "broken.sql",
            "-- a header\nSELECT user_id,\n       full_name\nFROM users WHERE\n",
        ),
    ])
    .await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("broken.sql:4: model broken:"), "{err}");
    let lake = Lake::open(&local_config(dir.path(), dir.path(), "").lake, dir.path()).unwrap();
    assert!(
        lake.read_manifest("good").await.unwrap().is_none(),
        "nothing ran"
    );
}

#[tokio::test]
async fn missing_column_names_file_and_line_and_skips_downstream() {
    let (result, _dir) = run_with(&[
        ("a.sql", "SELECT user_id,\n       full_nam\nFROM users"),
        ("b.sql", "SELECT * FROM a"),
        ("c.sql", "SELECT merchant_id FROM merchants"),
    ])
    .await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("a.sql:2: model a:"), "{err}");
    assert!(err.contains("full_nam"), "{err}");
    assert!(
        err.contains("1 model(s) failed (a), 1 skipped downstream (b)"),
        "{err}"
    );
}

#[tokio::test]
async fn type_error_names_file_and_line() {
    let (result, _dir) = run_with(&[(
        "t.sql",
        "SELECT user_id,\n       sum(full_name) AS s\nFROM users\nGROUP BY user_id",
    )])
    .await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("t.sql:2: model t:"), "{err}");
}

#[tokio::test]
async fn unknown_table_names_file_and_line() {
    let (result, _dir) = run_with(&[("u.sql", "SELECT *\nFROM userz")]).await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("u.sql:2: model u reads userz, which is neither a lake table nor a model"),
        "{err}"
    );
}

#[tokio::test]
async fn cycles_name_the_files() {
    let (result, _dir) = run_with(&[
        ("a.sql", "SELECT * FROM b"),
        ("b.sql", "SELECT * FROM c"),
        ("c.sql", "SELECT * FROM a"),
        ("d.sql", "SELECT * FROM users"),
    ])
    .await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("models depend on each other in a cycle"),
        "{err}"
    );
    for f in ["a.sql", "b.sql", "c.sql"] {
        assert!(err.contains(f), "{err}");
    }
    assert!(!err.contains("d.sql"), "{err}");
}

#[tokio::test]
async fn a_model_that_cannot_be_read_back_fails_alone() {
    // `SELECT *` from a lake table brings its `transaction_time_day` column, the
    // name the lake gives the partition day of a model partitioned by
    // transaction_time.
    let (result, dir) = run_with(&[
        (
            "copy.sql",
            "-- sluice: partition_by = transaction_time\nSELECT * FROM transactions",
        ),
        ("other.sql", "SELECT user_id FROM users"),
    ])
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), 8, "{err}");
    let err = err.to_string();
    assert!(err.contains("copy.sql: model copy:"), "{err}");
    assert!(err.contains("transaction_time_day"), "{err}");
    let lake = Lake::open(&local_config(dir.path(), dir.path(), "").lake, dir.path()).unwrap();
    assert!(lake.list("copy").await.unwrap().is_empty());
    assert!(lake.read_manifest("other").await.unwrap().is_some());
}

#[tokio::test]
async fn checks_counted_while_writing_follow_their_sql_meaning() {
    // merchant_id is an integer checked as text; user_id 42 refers to no user,
    // NULL refers to nothing and passes; status is NULL once (not_null fails,
    // accepted_values lets NULL pass).
    let sql = "SELECT transaction_id, merchant_id, \
               CASE WHEN transaction_id = 100 THEN 42 WHEN transaction_id = 101 THEN NULL ELSE user_id END AS user_id, \
               CASE WHEN transaction_id = 102 THEN NULL ELSE status END AS status \
               FROM transactions";
    let checks = "[models.model.counted.checks]\n\
                  not_null = [\"status\", \"transaction_id\"]\n\
                  unique = [\"merchant_id\", \"transaction_id\", \"merchant_id, status\"]\n\
                  accepted_values = { merchant_id = [\"10\"], status = [\"SUCCESS\", \"FAILED\", \"PENDING\"] }\n\
                  relationships = [{ column = \"user_id\", to = \"users\" }]\n\
                  row_count = { min = 9 }\n";
    let (result, dir) = run_with_settings(&[("counted.sql", sql)], checks).await;
    let err = result.unwrap_err().to_string();
    for expected in [
        "6 check(s) failed",
        "not_null(status) failed on 1 row(s)",
        // 10 three times, 20 five times: every row of a repeated key.
        "unique(merchant_id) failed on 8 row(s)",
        // (10, SUCCESS) twice, (20, SUCCESS) three times.
        "unique(merchant_id, status) failed on 5 row(s)",
        "accepted_values(merchant_id: 10) failed on 5 row(s)",
        "relationships(user_id → users.user_id) failed on 1 row(s)",
        "row_count(9..-) failed on 8 row(s)",
        "| 102            |",                         // the not_null sample
        "| 100            | 10          | 42      |", // the relationships sample
    ] {
        assert!(err.contains(expected), "{expected:?} not in:\n{err}");
    }
    for passed in [
        "not_null(transaction_id)",
        "accepted_values(status",
        "unique(transaction_id)",
    ] {
        assert!(!err.contains(passed), "{passed} passed:\n{err}");
    }
    let lake = Lake::open(&local_config(dir.path(), dir.path(), "").lake, dir.path()).unwrap();
    assert!(lake.read_manifest("counted").await.unwrap().is_none());
    assert!(lake.list("counted").await.unwrap().is_empty());

    // A check of a column the model does not have fails before anything is written.
    let (result, dir) = run_with_settings(
        &[("counted.sql", sql)],
        "[models.model.counted.checks]\nnot_null = [\"no_such_column\"]\n",
    )
    .await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("a check could not run (see [models.model.counted.checks]): the model has no column \"no_such_column\""),
        "{err}"
    );
    let lake = Lake::open(&local_config(dir.path(), dir.path(), "").lake, dir.path()).unwrap();
    assert!(lake.list("counted").await.unwrap().is_empty());
}
