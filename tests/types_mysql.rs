//! Type fidelity, MariaDB → Arrow → Parquet → ClickHouse: one table with every
//! carried type and its edge values, compared value by value in the lake's Parquet
//! files and in ClickHouse against the source. The server's global time zone is
//! set to `+05:00` for the test, so that `TIMESTAMP` values would be five hours off
//! if sluice relied on it.

mod common;
mod common_mysql;
mod types_support;

use common::*;
use common_mysql::MyDb;
use mysql::prelude::Queryable;
use types_support::{canonical, parquet_values, Kind};

/// Column, kind, MySQL expression giving the canonical text (in UTC), ClickHouse one.
const COLUMNS: &[(&str, Kind, &str, &str)] = &[
    ("id", Kind::Text, "id", "toString(id)"),
    ("ti", Kind::Text, "ti", "toString(ti)"),
    ("uti", Kind::Text, "uti", "toString(uti)"),
    ("si", Kind::Text, "si", "toString(si)"),
    ("usi", Kind::Text, "usi", "toString(usi)"),
    ("mi", Kind::Text, "mi", "toString(mi)"),
    ("umi", Kind::Text, "umi", "toString(umi)"),
    ("i", Kind::Text, "i", "toString(i)"),
    ("ui", Kind::Text, "ui", "toString(ui)"),
    ("bi", Kind::Text, "bi", "toString(bi)"),
    ("ubi", Kind::Text, "ubi", "toString(ubi)"),
    ("d38", Kind::Decimal, "d38", "toString(d38)"),
    ("d65", Kind::Decimal, "d65", "toString(d65)"),
    ("d_s20", Kind::Decimal, "d_s20", "toString(d_s20)"),
    ("f", Kind::Float32, "f", "toString(f)"),
    ("dbl", Kind::Float64, "dbl", "toString(dbl)"),
    ("b", Kind::Text, "b", "toString(b)"),
    ("t", Kind::Text, "t", "t"),
    ("vc", Kind::Text, "vc", "vc"),
    ("ch", Kind::Text, "ch", "ch"),
    ("bl", Kind::Hex, "HEX(bl)", "hex(bl)"),
    ("vb", Kind::Hex, "HEX(vb)", "hex(vb)"),
    ("dt", Kind::Text, "dt", "toString(dt)"),
    (
        "dtm",
        Kind::Timestamp,
        "DATE_FORMAT(dtm, '%Y-%m-%d %H:%i:%s.%f')",
        "formatDateTime(dtm, '%Y-%m-%d %H:%i:%S.%f')",
    ),
    (
        "ts",
        Kind::Timestamp,
        "DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f')",
        "formatDateTime(ts, '%Y-%m-%d %H:%i:%S.%f')",
    ),
    ("tm", Kind::Text, "CAST(tm AS CHAR)", "tm"),
    ("u", Kind::Text, "CAST(u AS CHAR)", "u"),
    ("j", Kind::Text, "j", "j"),
    ("e", Kind::Text, "e", "e"),
    ("yr", Kind::Text, "yr", "toString(yr)"),
    ("bt", Kind::Hex, "LPAD(HEX(bt), 2, '0')", "hex(bt)"),
];

fn seed(db: &mut MyDb) {
    db.exec(
        "CREATE TABLE all_types (
            id INT PRIMARY KEY,
            created_at DATETIME(6) NOT NULL,
            updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
            ti TINYINT, uti TINYINT UNSIGNED, si SMALLINT, usi SMALLINT UNSIGNED,
            mi MEDIUMINT, umi MEDIUMINT UNSIGNED, i INT, ui INT UNSIGNED,
            bi BIGINT, ubi BIGINT UNSIGNED,
            d38 DECIMAL(38,10), d65 DECIMAL(65,30), d_s20 DECIMAL(30,20),
            f FLOAT, dbl DOUBLE,
            b BOOLEAN,
            t TEXT, vc VARCHAR(20), ch CHAR(3),
            bl BLOB, vb VARBINARY(10),
            dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL,
            tm TIME(6),
            u UUID,
            j JSON,
            e ENUM('sad', 'ok', 'happy 😀'),
            yr YEAR,
            bt BIT(8)) CHARACTER SET utf8mb4",
    );
    // The session is in +05:00: TIMESTAMP literals are +05:00 wall-clock values.
    db.exec(
        "INSERT INTO all_types VALUES
        (1, UTC_TIMESTAMP(6), DEFAULT,
         -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
         -9999999999999999999999999999.9999999999,
         -99999999999999999999999999999999999.999999999999999999999999999999,
         -9999999999.99999999999999999999,
         -0.25, -1.7976931348623157e308,
         FALSE,
         '', '', 'a',
         X'00FF', X'',
         '1000-01-01', '1000-01-01 00:00:00', '1970-01-01 05:00:01',
         '-838:59:59', '00000000-0000-0000-0000-000000000000',
         '{\"big\": 123456789012345678901234567890, \"x\": 1.50}',
         'sad', 1901, b'00000000'),
        (2, UTC_TIMESTAMP(6), DEFAULT,
         127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295,
         9223372036854775807, 18446744073709551615,
         9999999999999999999999999999.9999999999,
         99999999999999999999999999999999999.999999999999999999999999999999,
         0.00000000000000000001,
         1.5, 1.7976931348623157e308,
         TRUE,
         'emoji 😀 ünïcødé \"quoted\" it''s', 'x', 'abc',
         X'DEADBEEF', X'01',
         '2100-01-01', '9999-12-31 23:59:59.999999', '2038-01-19 08:14:07.999999',
         '838:59:59.999999', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
         '[1, 2.50, null]',
         'happy 😀', 2155, b'10101010'),
        (3, UTC_TIMESTAMP(6), DEFAULT,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL),
        (4, UTC_TIMESTAMP(6), DEFAULT,
         0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0.5, 0, 1,
         0, 0,
         TRUE,
         ' ', ' ', '',
         X'', NULL,
         '1969-12-31', '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789',
         '00:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         'null',
         'ok', 2024, b'1')",
    );
}

fn config(prefix: &str, url: &str, ch_db: &str) -> String {
    format!(
        r#"
[lake]
url = "s3://{bucket}/{prefix}"

[sources.my]
kind = "mysql"
url = "{url}"

[clickhouse]
url = "{ch}"
database = "{ch_db}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "all_types"
source = "my"
source_table = "all_types"
cursor = "updated_at"
key = ["id"]
partition_by = "created_at"
"#,
        bucket = s3_bucket(),
        ch = clickhouse_url(),
        ch_s3 = clickhouse_s3_endpoint(),
    )
}

/// Sets the server's global time zone for the test's lifetime (restored on drop).
struct GlobalTimeZone(Option<mysql::Conn>);

impl GlobalTimeZone {
    fn set(zone: &str) -> Self {
        let opts = mysql::Opts::from_url(&common_mysql::mysql_url()).unwrap();
        let mut conn = mysql::Conn::new(opts).unwrap();
        match conn.query_drop(format!("SET GLOBAL time_zone = '{zone}'")) {
            Ok(()) => Self(Some(conn)),
            Err(e) => {
                eprintln!("cannot set the global time zone ({e}); testing with the server's");
                Self(None)
            }
        }
    }
}

impl Drop for GlobalTimeZone {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            let _ = conn.query_drop("SET GLOBAL time_zone = 'SYSTEM'");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mysql_type_round_trips() {
    let _zone = GlobalTimeZone::set("+05:00");
    let name = unique("my_types");
    let mut db = MyDb::create(&name);
    seed(&mut db);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config(&name, &db.url, &name));
    tokio::task::spawn_blocking(move || sluice_run_ok(&cfg))
        .await
        .unwrap();

    let select = |exprs: Vec<&str>| exprs.join(", ");
    let source = db.lines(&format!(
        "SELECT {} FROM all_types ORDER BY id",
        select(COLUMNS.iter().map(|c| c.2).collect())
    ));
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
            let in_warehouse = canonical(*kind, &w[i].replace("\\'", "'"));
            if in_lake != expected || in_warehouse != expected {
                failures.push(format!(
                    "row {row} column {column}: source {:?}, Parquet {:?}, ClickHouse {:?}",
                    s[i], lake[row][i], w[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let schema = batches[0].schema();
    let ty = |c: &str| schema.field_with_name(c).unwrap().data_type().to_string();
    assert_eq!(ty("d38"), "Decimal128(38, 10)");
    assert_eq!(ty("d65"), "Decimal256(65, 30)");
    assert_eq!(ty("ubi"), "UInt64");
    assert_eq!(ty("ts"), "Timestamp(µs, \"+00:00\")");
    assert_eq!(ty("dtm"), "Timestamp(µs)");
    let ch_types = ch_lines(&format!(
        "SELECT name, type FROM system.columns WHERE database = '{name}' AND table = 'all_types' \
         AND name IN ('d65', 'ubi', 'ts') ORDER BY name"
    ))
    .await
    .iter()
    .map(|l| l.replace("\\'", "'"))
    .collect::<Vec<_>>();
    assert_eq!(
        ch_types,
        [
            "d65|Nullable(Decimal(65, 30))",
            "ts|Nullable(DateTime64(6, 'UTC'))",
            "ubi|Nullable(UInt64)",
        ]
    );
    db.drop();
}

#[tokio::test(flavor = "multi_thread")]
async fn uncarriable_mysql_type_fails_before_data_moves() {
    let name = unique("my_badtype");
    let mut db = MyDb::create(&name);
    db.exec(
        "CREATE TABLE all_types (id INT PRIMARY KEY, created_at DATETIME NOT NULL,
           updated_at DATETIME NOT NULL, place POINT);
         INSERT INTO all_types VALUES (1, NOW(), NOW(), POINT(1, 2))",
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &config(&name, &db.url, &name));
    let out = sluice(&["run", "--config", cfg.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("\"place\"") && stderr.contains("CAST(`place` AS CHAR)"),
        "{stderr}"
    );
    assert!(
        list(&s3_store(), &format!("{name}/all_types/created_at"))
            .await
            .is_empty(),
        "no data moved"
    );
    db.drop();
}
