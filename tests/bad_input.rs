//! Bad input gives a one-line error naming the table and what to fix, a distinct
//! exit code, no secret in the output, and nothing committed.

mod common;

use common::*;

async fn source_with_table(test: &str) -> PgDb {
    let pg = PgDb::create(&unique(test)).await;
    pg.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
         INSERT INTO orders SELECT g, now() - g * interval '1 hour', now() FROM generate_series(1, 50) g;",
    )
    .await;
    pg
}

fn local_config(lake: &std::path::Path, pg_url: &str, table: &str, cursor: &str) -> String {
    format!(
        r#"
[lake]
url = "{lake}"

[sources.app]
kind = "postgres"
url = "{pg_url}"

[[table]]
name = "orders"
source = "app"
source_table = "{table}"
cursor = "{cursor}"
key = ["id"]
partition_by = "created_at"
"#,
        lake = lake.display()
    )
}

struct Failure {
    code: i32,
    stderr: String,
    stdout: String,
}

fn run_failing(config: &std::path::Path) -> Failure {
    let out = sluice(&["run", "--config", config.to_str().unwrap()], &[]);
    let f = Failure {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
    };
    assert!(
        !out.status.success(),
        "expected a failure:\n{}\n{}",
        f.stdout,
        f.stderr
    );
    f
}

fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_cursor_column_names_table_and_column() {
    let pg = source_with_table("nocursor").await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let cfg = write_config(&dir, &local_config(&lake, &pg.url, "orders", "changed_at"));
    let f = tokio::task::spawn_blocking(move || run_failing(&cfg))
        .await
        .unwrap();
    assert_eq!(f.code, 3, "{}", f.stderr);
    let line = error_line(&f.stderr);
    assert!(
        line.contains("table orders") && line.contains("changed_at"),
        "{line}"
    );
    assert!(
        !lake.join("orders/_delta_log").exists(),
        "nothing committed"
    );
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_source_table_names_it() {
    let pg = source_with_table("notable").await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let cfg = write_config(
        &dir,
        &local_config(&lake, &pg.url, "public.no_such_table", "updated_at"),
    );
    let f = tokio::task::spawn_blocking(move || run_failing(&cfg))
        .await
        .unwrap();
    assert_eq!(f.code, 3, "{}", f.stderr);
    let line = error_line(&f.stderr);
    assert!(
        line.contains("table orders") && line.contains("no_such_table"),
        "{line}"
    );
    assert!(!lake.join("orders/_delta_log").exists());
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_never_printed() {
    let pg = source_with_table("badpass").await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let secret = "Wr0ng-Pa55word-Zq8";
    let url = pg
        .url
        .replacen("sluice:sluice@", &format!("sluice:{secret}@"), 1);
    assert!(
        url.contains(secret),
        "test URL must carry the password: {url}"
    );
    let cfg = write_config(&dir, &local_config(&lake, &url, "orders", "updated_at"));
    let f = tokio::task::spawn_blocking(move || run_failing(&cfg))
        .await
        .unwrap();
    assert_eq!(f.code, 3, "{}", f.stderr);
    assert!(
        error_line(&f.stderr).contains("table orders"),
        "{}",
        f.stderr
    );
    assert!(
        !f.stderr.contains(secret) && !f.stdout.contains(secret),
        "{}",
        f.stderr
    );
    for entry in walk(&lake) {
        let text = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&text).contains(secret),
            "{}",
            entry.display()
        );
    }
    pg.drop().await;
}

#[test]
fn unknown_config_key_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = local_config(
        &dir.path().join("lake"),
        "postgres://x@127.0.0.1/x",
        "t",
        "updated_at",
    )
    .replace("cursor =", "cursr = \"x\"\ncursor =");
    let cfg = write_config(&dir, &text);
    let f = run_failing(&cfg);
    assert_eq!(f.code, 2, "{}", f.stderr);
    assert!(
        error_line(&f.stderr).contains("unknown field `cursr`"),
        "{}",
        f.stderr
    );
}

#[test]
fn missing_env_var_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = local_config(
        &dir.path().join("lake"),
        "postgres://u:${SLUICE_TEST_UNSET_VAR}@h/db",
        "t",
        "c",
    );
    let cfg = write_config(&dir, &text);
    let f = run_failing(&cfg);
    assert_eq!(f.code, 2);
    assert!(
        error_line(&f.stderr).contains("SLUICE_TEST_UNSET_VAR is not set"),
        "{}",
        f.stderr
    );
}

/// ClickHouse down during the load: the lake commit stays, the watermark does not
/// move, and the next run (ClickHouse back) loads everything exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn warehouse_down_then_back() {
    let name = unique("chdown");
    let pg = source_with_table("chdown").await;
    let dir = tempfile::tempdir().unwrap();
    let config = |ch_url: &str| {
        format!(
            r#"
[lake]
url = "s3://{bucket}/{name}"

[sources.app]
kind = "postgres"
url = "{pg}"

[clickhouse]
url = "{ch_url}"
database = "{name}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "orders"
source = "app"
source_table = "orders"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
"#,
            bucket = s3_bucket(),
            pg = pg.url,
            ch_s3 = clickhouse_s3_endpoint(),
        )
    };
    let down = write_config(&dir, &config("http://127.0.0.1:1"));
    let f = tokio::task::spawn_blocking(move || run_failing(&down))
        .await
        .unwrap();
    assert_eq!(f.code, 5, "{}", f.stderr);
    assert!(
        error_line(&f.stderr).contains("table orders: ClickHouse"),
        "{}",
        f.stderr
    );

    let manifest = s3_table_state(&name, "orders").await;
    assert!(
        manifest["watermark"].is_null(),
        "watermark must not advance: {manifest}"
    );
    assert!(!manifest["pending_warehouse"].as_array().unwrap().is_empty());

    let up = write_config(&dir, &config(&clickhouse_url()));
    tokio::task::spawn_blocking(move || sluice_run_ok(&up))
        .await
        .unwrap();
    let source = pg
        .lines("SELECT id::text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM orders o ORDER BY o.id")
        .await;
    let warehouse = ch_lines(&format!(
        "SELECT id, formatDateTime(created_at, '%Y-%m-%d %H:%i:%S.%f') FROM `{name}`.orders ORDER BY id"
    ))
    .await;
    assert_eq!(source, warehouse);
    pg.drop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Tables run two at a time (`--jobs 2`): when one fails, the table running beside
/// it still commits, no further table starts, and the exit code is the failure's.
#[tokio::test(flavor = "multi_thread")]
async fn failing_table_stops_the_tables_after_it_not_the_one_beside_it() {
    let pg = source_with_table("jobs").await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let table = |name: &str, source_table: &str| {
        format!(
            "\n[[table]]\nname = \"{name}\"\nsource = \"app\"\nsource_table = \"{source_table}\"\n\
             cursor = \"updated_at\"\nkey = [\"id\"]\npartition_by = \"created_at\"\n"
        )
    };
    let text = format!(
        "[lake]\nurl = \"{}\"\n\n[sources.app]\nkind = \"postgres\"\nurl = \"{}\"\n{}{}{}",
        lake.display(),
        pg.url,
        table("broken", "public.no_such_table"),
        table("beside", "orders"),
        table("after", "orders"),
    );
    let cfg = write_config(&dir, &text);
    let out = tokio::task::spawn_blocking(move || {
        sluice(
            &["run", "--jobs", "2", "--config", cfg.to_str().unwrap()],
            &[],
        )
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(error_line(&stderr).contains("table broken"), "{stderr}");
    let manifest = table_state(lake.to_str().unwrap(), "beside").await;
    assert!(!manifest.is_null(), "beside committed");
    let rows: u64 = manifest["partitions"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 50, "{manifest}");
    assert!(
        !lake.join("after").exists(),
        "a table started after the failure"
    );
    pg.drop().await;
}
