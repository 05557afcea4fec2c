//! Type fidelity, PostgreSQL 15 → Arrow → Parquet → ClickHouse: one table with every
//! carried type and its edge values, compared value by value in the lake's Parquet
//! files and in ClickHouse against the source.

mod common;
mod types_support;

use common::*;
use types_support::{canonical, parquet_values, Kind, NULL};

/// Column, kind, PostgreSQL expression giving the canonical text, ClickHouse one.
const COLUMNS: &[(&str, Kind, &str, &str)] = &[
    ("id", Kind::Text, "id::text", "toString(id)"),
    ("i2", Kind::Text, "i2::text", "toString(i2)"),
    ("i4", Kind::Text, "i4::text", "toString(i4)"),
    ("i8", Kind::Text, "i8::text", "toString(i8)"),
    ("n38", Kind::Decimal, "n38::text", "toString(n38)"),
    ("n_s20", Kind::Decimal, "n_s20::text", "toString(n_s20)"),
    ("n_wide", Kind::Decimal, "n_wide::text", "toString(n_wide)"),
    ("n_free", Kind::Decimal, "n_free::text", "toString(n_free)"),
    ("r", Kind::Float32, "r::text", "toString(r)"),
    ("d", Kind::Float64, "d::text", "toString(d)"),
    ("b", Kind::Text, "b::text", "toString(b)"),
    ("t", Kind::Text, "t", "t"),
    ("vc", Kind::Text, "vc", "vc"),
    ("ch", Kind::Text, "ch", "ch"),
    ("by", Kind::Hex, "encode(by, 'hex')", "lower(hex(by))"),
    ("dt", Kind::Text, "dt::text", "toString(dt)"),
    (
        "ts",
        Kind::Timestamp,
        "to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US')",
        "formatDateTime(ts, '%Y-%m-%d %H:%i:%S.%f')",
    ),
    (
        "tstz",
        Kind::Timestamp,
        "to_char(tstz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
        "formatDateTime(tstz, '%Y-%m-%d %H:%i:%S.%f')",
    ),
    ("tm", Kind::Text, "tm::text", "tm"),
    ("u", Kind::Text, "u::text", "toString(u)"),
    ("j", Kind::Text, "j::text", "j"),
    ("jb", Kind::Text, "jb::text", "jb"),
    (
        "ai",
        Kind::Json,
        "array_to_json(ai)::text",
        "toJSONString(ai)",
    ),
    (
        "at",
        Kind::Json,
        "array_to_json(at)::text",
        "toJSONString(at)",
    ),
    (
        "af",
        Kind::Json,
        "array_to_json(af)::text",
        "toJSONString(af)",
    ),
    (
        "ab",
        Kind::Json,
        "array_to_json(ab)::text",
        "toJSONString(ab)",
    ),
    ("e", Kind::Text, "e::text", "e"),
];

async fn seed(pg: &PgDb) {
    pg.exec(
        r#"
        SET TIME ZONE 'Asia/Kolkata';
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀');
        CREATE TABLE all_types (
            id int PRIMARY KEY,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            i2 smallint, i4 integer, i8 bigint,
            n38 numeric(38,10), n_s20 numeric(30,20), n_wide numeric(50,5), n_free numeric,
            r real, d double precision,
            b boolean,
            t text, vc varchar(20), ch char(3),
            by bytea,
            dt date,
            ts timestamp, tstz timestamptz,
            tm time,
            u uuid,
            j json, jb jsonb,
            ai int[], at text[], af float8[], ab bool[],
            e mood);
        INSERT INTO all_types VALUES
        (1, now(), now(),
         -32768, -2147483648, -9223372036854775808,
         -9999999999999999999999999999.9999999999, -9999999999.99999999999999999999,
         -999999999999999999999999999999999999999999999.99999, -0.0000000001,
         '-Infinity', '-Infinity',
         false,
         '', '', 'a',
         '\x00ff',
         '1969-12-31',
         '1969-12-31 23:59:59.999999', '1969-12-31 23:59:59.999999+00',
         '00:00:00',
         '00000000-0000-0000-0000-000000000000',
         '{"big": 123456789012345678901234567890, "x": 1.50,  "k": "v"}', '{}',
         '{}', '{"",NULL,"😀"}', '{}', '{}',
         'sad'),
        (2, now(), now(),
         32767, 2147483647, 9223372036854775807,
         9999999999999999999999999999.9999999999, 9999999999.99999999999999999999,
         999999999999999999999999999999999999999999999.99999, 12345678901234567890.5,
         'Infinity', 'Infinity',
         true,
         'emoji 😀 ünïcødé "quoted" it''s', 'x', 'abc',
         '\xdeadbeef',
         '2100-01-01',
         '2100-01-01 00:00:00', '2100-01-01 00:00:00+14',
         '23:59:59.999999',
         'ffffffff-ffff-ffff-ffff-ffffffffffff',
         '[1, 2.50, null]', '{"a": [1, 2.5, null], "b": {"c": "😀"}}',
         '{1,NULL,-3}', '{a,b}', '{1.5,NULL,-2.25e10}', '{true,NULL,false}',
         'happy 😀'),
        (3, now(), now(),
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (4, now(), now(),
         0, 0, 0, 0.5, 0.00000000000000000001, 0, 0,
         'NaN', 'NaN',
         true,
         ' ', ' ', '',
         '',
         '2024-02-29',
         '2024-02-29 12:34:56.789', '2024-03-31 01:30:00+01',
         '12:00:00.5',
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         'null', '"s"',
         '{0}', '{""}', '{0}', '{true}',
         'ok');
        "#,
    )
    .await;
}

fn config(prefix: &str, url: &str, ch_db: &str) -> String {
    format!(
        r#"
[lake]
url = "s3://{bucket}/{prefix}"

[sources.pg]
kind = "postgres"
url = "{url}"

[clickhouse]
url = "{ch}"
database = "{ch_db}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "all_types"
source = "pg"
source_table = "public.all_types"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
"#,
        bucket = s3_bucket(),
        ch = clickhouse_url(),
        ch_s3 = clickhouse_s3_endpoint(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_postgres_type_round_trips() {
    let name = unique("pg_types");
    let pg = PgDb::create(&name).await;
    seed(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config(&name, &pg.url, &name));
    tokio::task::spawn_blocking(move || sluice_run_ok(&cfg))
        .await
        .unwrap();

    let select = |exprs: Vec<&str>| exprs.join(", ");
    let source = pg
        .lines(&format!(
            "SELECT {} FROM all_types ORDER BY id",
            select(COLUMNS.iter().map(|c| c.2).collect())
        ))
        .await;
    let warehouse = ch_lines(&format!(
        "SELECT {} FROM `{name}`.all_types ORDER BY id \
         SETTINGS output_format_decimal_trailing_zeros = 1",
        select(COLUMNS.iter().map(|c| c.3).collect())
    ))
    .await;
    let batches = read_parquet_under(&s3_store(), &format!("{name}/all_types")).await;
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
    let lake = parquet_values(&batches, &names, "id");

    assert_eq!(source.len(), 4);
    assert_eq!(warehouse.len(), 4, "{warehouse:?}");
    assert_eq!(lake.len(), 4);
    let mut failures = Vec::new();
    for row in 0..4 {
        let s: Vec<&str> = source[row].split('|').collect();
        let w: Vec<&str> = warehouse[row].split('|').collect();
        for (i, (column, kind, _, _)) in COLUMNS.iter().enumerate() {
            let expected = canonical(*kind, s[i]);
            let in_lake = canonical(*kind, &lake[row][i]);
            // ClickHouse arrays cannot be NULL: a NULL array is loaded as [].
            let expected_in_warehouse = match (*kind, s[i]) {
                (Kind::Json, NULL) => "[]".to_string(),
                _ => expected.clone(),
            };
            let in_warehouse = canonical(*kind, &w[i].replace("\\'", "'"));
            if in_lake != expected || in_warehouse != expected_in_warehouse {
                failures.push(format!(
                    "row {row} column {column}: source {:?}, Parquet {:?}, ClickHouse {:?}",
                    s[i], lake[row][i], w[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The lake's types carry the source's precision and scale.
    let schema = batches[0].schema();
    let ty = |c: &str| schema.field_with_name(c).unwrap().data_type().to_string();
    assert_eq!(ty("n38"), "Decimal128(38, 10)");
    assert_eq!(ty("n_s20"), "Decimal128(30, 20)");
    assert_eq!(ty("n_wide"), "Decimal256(50, 5)");
    let ch_types = ch_lines(&format!(
        "SELECT name, type FROM system.columns WHERE database = '{name}' AND table = 'all_types' \
         AND name IN ('n38', 'n_s20', 'n_wide', 'tstz', 'ts') ORDER BY name"
    ))
    .await
    .iter()
    .map(|l| l.replace("\\'", "'"))
    .collect::<Vec<_>>();
    assert_eq!(
        ch_types,
        [
            "n38|Nullable(Decimal(38, 10))",
            "n_s20|Nullable(Decimal(30, 20))",
            "n_wide|Nullable(Decimal(50, 5))",
            "ts|Nullable(DateTime64(6, 'UTC'))",
            "tstz|Nullable(DateTime64(6, 'UTC'))",
        ]
    );
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uncarriable_postgres_type_fails_before_data_moves() {
    let name = unique("pg_badtype");
    let pg = PgDb::create(&name).await;
    pg.exec(
        "CREATE TABLE all_types (id int PRIMARY KEY, created_at timestamptz NOT NULL,
           updated_at timestamptz NOT NULL, span interval);
         INSERT INTO all_types VALUES (1, now(), now(), interval '1 day');",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config(&name, &pg.url, &name));
    let out = sluice(&["run", "--config", cfg.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("\"span\"") && stderr.contains("interval") && stderr.contains("::text"),
        "{stderr}"
    );
    assert!(
        list(&s3_store(), &format!("{name}/all_types/created_at"))
            .await
            .is_empty(),
        "no data moved"
    );
    pg.drop().await;
}
