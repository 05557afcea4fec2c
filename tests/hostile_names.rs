//! Hostile names: quotes, backticks, spaces, unicode and SQL keywords in table and
//! column names are quoted correctly in every statement sluice generates (source
//! SQL, ClickHouse DDL and s3() URLs) — the data arrives intact, nothing is injected.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn hostile_table_and_column_names_round_trip() {
    let name = unique("hostile");
    let pg = PgDb::create(&name).await;
    pg.exec(
        r#"CREATE TABLE "Tablé ""select""; DROP TABLE x; --" (
               "id" bigint PRIMARY KEY,
               "select" text,
               "my col" int,
               "quo'te" text,
               "back`tick" text,
               "ünï ☃" text,
               "created at" timestamptz NOT NULL,
               "from" timestamptz NOT NULL);
           INSERT INTO "Tablé ""select""; DROP TABLE x; --"
           SELECT g, 'v' || g, g * 2, 'it''s', 'a`b', 'snow ☃ ' || g,
                  now() - (g % 3) * interval '1 day', now() - interval '1 hour'
           FROM generate_series(1, 40) g;"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // TOML basic strings: \" is a quote, \\ a backslash.
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
name = "ördërs select 'x`"
source = "app"
source_table = "public.Tablé \"select\"; DROP TABLE x; --"
cursor = "from"
key = ["id"]
partition_by = "created at"
"#,
            bucket = s3_bucket(),
            pg = pg.url,
            ch = clickhouse_url(),
            ch_s3 = clickhouse_s3_endpoint(),
        ),
    );
    let cfg = config.clone();
    let out = tokio::task::spawn_blocking(move || {
        sluice(&["run", "--config", cfg.to_str().unwrap()], &[])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let source = pg
        .lines(
            r#"SELECT t.id::text, "select", "my col"::text, "quo'te", "back`tick", "ünï ☃",
                      to_char("created at" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')
               FROM "Tablé ""select""; DROP TABLE x; --" t ORDER BY t.id"#,
        )
        .await;
    let warehouse = ch_lines_raw(&format!(
        "SELECT id, `select`, `my col`, `quo'te`, `back\\`tick`, `ünï ☃`, \
         formatDateTime(`created at`, '%Y-%m-%d %H:%i:%S.%f') \
         FROM `{name}`.`ördërs select 'x\\`` ORDER BY id"
    ))
    .await;
    assert_eq!(source, warehouse);
    // DataFusion over the lake finds the same rows under the same names.
    let cfg = config.clone();
    let out = tokio::task::spawn_blocking(move || {
        sluice(
            &[
                "query",
                "--config",
                cfg.to_str().unwrap(),
                "--format",
                "csv",
                r#"SELECT count(*) AS n, sum("my col") AS s FROM "ördërs select 'x`""#,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n,s\n40,1640");
    // The source table is still there: nothing was injected.
    assert_eq!(
        pg.lines(
            "SELECT count(*)::text FROM information_schema.tables WHERE table_name LIKE 'Tabl%'"
        )
        .await,
        vec!["1"]
    );
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_table_loads_nothing_and_reruns_cleanly() {
    let name = unique("empty");
    let pg = PgDb::create(&name).await;
    pg.exec("CREATE TABLE t (id int PRIMARY KEY, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)")
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
name = "t"
source = "app"
source_table = "t"
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
    for _ in 0..2 {
        let cfg = config.clone();
        tokio::task::spawn_blocking(move || sluice_run_ok(&cfg))
            .await
            .unwrap();
    }
    // Rows arrive later: the next run loads them.
    pg.exec("INSERT INTO t SELECT g, now(), now() FROM generate_series(1, 5) g")
        .await;
    let cfg = config.clone();
    tokio::task::spawn_blocking(move || sluice_run_ok(&cfg))
        .await
        .unwrap();
    assert_eq!(
        ch_lines(&format!("SELECT count() FROM `{name}`.t")).await,
        vec!["5"]
    );
    pg.drop().await;
}
