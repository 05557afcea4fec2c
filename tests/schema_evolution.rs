//! Schema evolution between runs: an added column and widened types are followed by
//! the lake and ClickHouse; a dropped column or an incompatible type stops the
//! table until `--allow-schema-change` rebuilds it.

mod common;

use common::*;

async fn run(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "run".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice(&args, &[])
    })
    .await
    .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn ch_columns(db: &str) -> Vec<String> {
    ch_lines(&format!(
        "SELECT name, type FROM system.columns WHERE database = '{db}' AND table = 'items' ORDER BY position"
    ))
    .await
}

async fn assert_equal(pg: &PgDb, db: &str, columns_pg: &str, columns_ch: &str) {
    let source = pg
        .lines(&format!("SELECT {columns_pg} FROM items i ORDER BY i.id"))
        .await;
    let warehouse = ch_lines(&format!(
        "SELECT {columns_ch} FROM `{db}`.items ORDER BY id"
    ))
    .await;
    assert_eq!(source, warehouse);
}

#[tokio::test(flavor = "multi_thread")]
async fn add_widen_then_drop_and_rebuild() {
    let name = unique("schema");
    let pg = PgDb::create(&name).await;
    pg.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name varchar(10), qty int,
                             created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
         INSERT INTO items SELECT g, 'item' || g, g, now() - (g % 3) * interval '1 day', now() - interval '1 hour'
         FROM generate_series(1, 30) g;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!(
            r#"
[lake]
url = "s3://{bucket}/{name}"

[sources.app]
kind = "postgres"
url = "{pg}"

[clickhouse]
url = "{ch}"
database = "{name}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "items"
source = "app"
source_table = "items"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
"#,
            bucket = s3_bucket(),
            pg = pg.url,
            ch = clickhouse_url(),
            ch_s3 = clickhouse_s3_endpoint(),
        ),
    );
    ok(&run(&config, &[]).await);
    assert_equal(&pg, &name, "id::text, name, qty::text", "id, name, qty").await;

    // 1. An added column: new files carry it, older rows read NULL, ClickHouse gains it.
    pg.exec(
        "ALTER TABLE items ADD COLUMN note text;
         UPDATE items SET note = 'changed', updated_at = now() WHERE id IN (1, 2, 3);",
    )
    .await;
    let out = ok(&run(&config, &[]).await);
    assert!(out.contains("schema evolved: added note"), "{out}");
    assert_equal(
        &pg,
        &name,
        "id::text, name, qty::text, note",
        "id, name, qty, note",
    )
    .await;
    assert!(ch_columns(&name)
        .await
        .contains(&"note|Nullable(String)".to_string()));

    // 2. Widened types: INT → BIGINT (with a value that needs it), VARCHAR(10) → (50),
    //    REAL → DOUBLE PRECISION. connectorx reads every PostgreSQL integer as Int64,
    //    every float as Float64 and every varchar as Utf8, so the lake's schema does
    //    not change and the wider values simply arrive (widening of the lake's own
    //    types is covered by the unit tests of lake::schema).
    pg.exec("ALTER TABLE items ADD COLUMN price real; UPDATE items SET price = 1.5, updated_at = now();")
        .await;
    ok(&run(&config, &[]).await);
    pg.exec(
        "ALTER TABLE items ALTER COLUMN qty TYPE bigint, ALTER COLUMN name TYPE varchar(50),
                           ALTER COLUMN price TYPE double precision;
         UPDATE items SET qty = 5000000000, name = 'a much longer name than before', price = 0.1,
                          updated_at = now() WHERE id = 4;",
    )
    .await;
    let out = ok(&run(&config, &[]).await);
    assert!(!out.contains("schema evolved"), "{out}");
    assert_equal(
        &pg,
        &name,
        "id::text, name, qty::text, note",
        "id, name, qty, note",
    )
    .await;
    assert_equal(&pg, &name, "id::text, price::float8::text", "id, price").await;
    assert!(ch_columns(&name)
        .await
        .contains(&"qty|Nullable(Int64)".to_string()));
    assert!(ch_columns(&name)
        .await
        .contains(&"price|Nullable(Float64)".to_string()));
    let manifest = s3_table_state(&name, "items").await;
    assert_eq!(manifest["schema_version"], 3, "{manifest}");
    assert_eq!(manifest["schema_history"].as_array().unwrap().len(), 3);

    // 3. A dropped column stops the table, naming it and the way out.
    pg.exec(
        "ALTER TABLE items DROP COLUMN note; UPDATE items SET updated_at = now() WHERE id = 5;",
    )
    .await;
    let refused = run(&config, &[]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("column \"note\" was dropped at the source")
            && stderr.contains("--allow-schema-change"),
        "{stderr}"
    );
    // ... and the rebuild reloads everything: lake and ClickHouse equal the source.
    let out = ok(&run(&config, &["--allow-schema-change"]).await);
    assert!(out.contains("table rebuilt"), "{out}");
    assert_equal(
        &pg,
        &name,
        "id::text, name, qty::text, price::text",
        "id, name, qty, price",
    )
    .await;
    assert!(!ch_columns(&name)
        .await
        .iter()
        .any(|c| c.starts_with("note|")));

    // 4. An incompatible type change (text → int) is refused too.
    pg.exec("ALTER TABLE items ALTER COLUMN name TYPE int USING id; UPDATE items SET updated_at = now() WHERE id = 6;")
        .await;
    let refused = run(&config, &[]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("column \"name\" changed type from Utf8 to Int64"),
        "{stderr}"
    );
    pg.drop().await;
}
