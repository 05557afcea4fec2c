//! MongoDB (SecantusDB) → lake on S3 → ClickHouse in snapshot and snapshot-diff
//! modes, end to end on the real services.

mod common;

use arrow::util::pretty::pretty_format_batches;
use common::*;
use mongodb::bson::{
    doc, oid::ObjectId, spec::BinarySubtype, Binary, DateTime, Decimal128, Document,
};

async fn collection(db: &str, name: &str) -> mongodb::Collection<Document> {
    let client = mongodb::Client::with_uri_str(mongo_url(db))
        .await
        .unwrap_or_else(|e| panic!("MongoDB (run scripts/services.sh up): {e}"));
    client.database(db).collection(name)
}

fn config(db: &str, lake_prefix: &str, ch_db: &str, mode: &str, extra: &str) -> String {
    format!(
        r#"
[lake]
url = "s3://{bucket}/{lake_prefix}"

[sources.app]
kind = "mongodb"
url = "{mongo}"

[clickhouse]
url = "{ch}"
database = "{ch_db}"
s3_endpoint = "{ch_s3}"

[[table]]
name = "users"
source = "app"
collection = "users"
mode = "{mode}"
batch_rows = 3
{extra}
"#,
        bucket = s3_bucket(),
        mongo = mongo_url(db),
        ch = clickhouse_url(),
        ch_s3 = clickhouse_s3_endpoint(),
    )
}

fn run_on(config: &std::path::Path, day: &str) -> String {
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

fn day(offset: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(offset))
        .format("%Y-%m-%d")
        .to_string()
}

fn oid(n: u8) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[11] = n;
    bytes[0] = 0x65;
    ObjectId::from_bytes(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_every_bson_type_round_trips_and_rerun_replaces_the_day() {
    let db = unique("mongo_snap");
    let coll = collection(&db, "users").await;
    coll.insert_many(vec![
        doc! {
            "_id": oid(1), "uid": "UID00000001", "age": 36i32, "visits": 5_000_000_000i64,
            "score": 4.5, "active": true,
            "born": DateTime::from_millis(-2_208_988_800_000), // 1900-01-01, before 1970
            "balance": "1234.56".parse::<Decimal128>().unwrap(),
            "blob": Binary { subtype: BinarySubtype::Generic, bytes: vec![0xff, 0x00, 0xc3] },
            "address": { "city": "Lagos", "zip": 100001i32 },
            "tags": ["a", "b"],
            "mixed": 1i32,
        },
        doc! {
            "_id": oid(2), "uid": "UID00000002", "age": 41i32, "visits": 7i32, "score": 3i32,
            "active": false, "born": DateTime::from_millis(1_700_000_000_123),
            "balance": "-0.5".parse::<Decimal128>().unwrap(),
            "blob": Binary { subtype: BinarySubtype::Generic, bytes: vec![] },
            "address": { "city": "Abuja" }, "tags": [], "mixed": "one",
        },
        doc! { "_id": oid(3), "uid": "UID00000003", "address": null, "tags": null },
    ])
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("mongo_snap_lake");
    let ch_db = unique("mongo_snap_ch");
    let path = write_config(
        &dir,
        &config(&db, &prefix, &ch_db, "snapshot", "retention_days = 30"),
    );
    let today = day(0);
    run_on(&path, &today);

    let store = s3_store();
    let batches = read_parquet_under(&store, &format!("{prefix}/users/")).await;
    let text = pretty_format_batches(&batches).unwrap().to_string();
    for expected in [
        "650000000000000000000001",
        "1900-01-01T00:00:00Z",
        "2023-11-14T22:13:20.123Z",
        "1234.56",
        "-0.50",
        "ff00c3",
        "{city: Lagos, zip: 100001}",
        "[a, b]",
        "5000000000",
        "\"one\"",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }

    let rows = ch_lines(&format!(
        "SELECT _id, uid, age, visits, score, active, toString(born), toString(balance), hex(blob), \
         address.city, tags, mixed, snapshot_date FROM `{ch_db}`.users ORDER BY _id"
    ))
    .await;
    assert_eq!(
        rows,
        vec![
            format!("650000000000000000000001|UID00000001|36|5000000000|4.5|true|1900-01-01 00:00:00.000|1234.56|FF00C3|Lagos|['a','b']|1|{today}"),
            format!("650000000000000000000002|UID00000002|41|7|3|false|2023-11-14 22:13:20.123|-0.5||Abuja|[]|\"one\"|{today}"),
            format!("650000000000000000000003|UID00000003|\\N|\\N|\\N|\\N|\\N|\\N|\\N|\\N|[]|\\N|{today}"),
        ]
    );

    // A rerun the same day replaces the day: same count, not double.
    run_on(&path, &today);
    let count = ch_lines(&format!("SELECT count() FROM `{ch_db}`.users")).await;
    assert_eq!(count, vec!["3"]);
    let batches = read_parquet_under(&store, &format!("{prefix}/users/")).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    ch_exec(&format!("DROP DATABASE IF EXISTS `{ch_db}`")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_diff_finds_inserts_updates_and_deletes() {
    let db = unique("mongo_diff");
    let coll = collection(&db, "users").await;
    let users =
        |n: u8, state: &str| doc! { "_id": oid(n), "uid": format!("UID{n:08}"), "state": state };
    coll.insert_many((1..=7).map(|n| users(n, "Lagos")))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("mongo_diff_lake");
    let ch_db = unique("mongo_diff_ch");
    let path = write_config(&dir, &config(&db, &prefix, &ch_db, "snapshot_diff", ""));
    let (day1, day2) = (day(-1), day(0));
    run_on(&path, &day1);
    let changes = |d: &str| {
        format!(
            "SELECT _id, state, _op, _is_deleted FROM `{ch_db}`.users WHERE _change_date = '{d}' ORDER BY _id"
        )
    };
    assert_eq!(
        ch_lines(&changes(&day1)).await.len(),
        7,
        "day 1: all inserts"
    );

    // Day 2: one insert, two updates, two deletes, one replace with the same content.
    coll.insert_one(users(8, "Kano")).await.unwrap();
    coll.update_one(doc! { "_id": oid(2) }, doc! { "$set": { "state": "Oyo" } })
        .await
        .unwrap();
    coll.update_one(doc! { "_id": oid(5) }, doc! { "$set": { "state": "Edo" } })
        .await
        .unwrap();
    coll.replace_one(doc! { "_id": oid(6) }, users(6, "Lagos"))
        .await
        .unwrap();
    coll.delete_many(doc! { "_id": { "$in": [oid(3), oid(7)] } })
        .await
        .unwrap();
    run_on(&path, &day2);
    let expected = vec![
        "650000000000000000000002|Oyo|update|0",
        "650000000000000000000003|Lagos|delete|1",
        "650000000000000000000005|Edo|update|0",
        "650000000000000000000007|Lagos|delete|1",
        "650000000000000000000008|Kano|insert|0",
    ];
    assert_eq!(ch_lines(&changes(&day2)).await, expected);

    let current = format!("SELECT _id, state FROM `{ch_db}`.users_current FINAL ORDER BY _id");
    let expected_current = vec![
        "650000000000000000000001|Lagos",
        "650000000000000000000002|Oyo",
        "650000000000000000000004|Lagos",
        "650000000000000000000005|Edo",
        "650000000000000000000006|Lagos",
        "650000000000000000000008|Kano",
    ];
    assert_eq!(ch_lines(&current).await, expected_current);

    // The lake's change table has the same day-2 rows.
    let store = s3_store();
    let lake_changes =
        read_parquet_under(&store, &format!("{prefix}/users/_change_date_day={day2}/")).await;
    assert_eq!(lake_changes.iter().map(|b| b.num_rows()).sum::<usize>(), 5);

    // A rerun of day 2 with no source change is a no-op in counts.
    run_on(&path, &day2);
    assert_eq!(ch_lines(&changes(&day2)).await, expected);
    assert_eq!(ch_lines(&current).await, expected_current);
    let totals = ch_lines(&format!(
        "SELECT count() FROM `{ch_db}`.users UNION ALL SELECT count() FROM `{ch_db}`.users_current FINAL"
    ))
    .await;
    let mut totals = totals;
    totals.sort();
    assert_eq!(totals, vec!["12", "6"]);
    ch_exec(&format!("DROP DATABASE IF EXISTS `{ch_db}`")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_documents_fail_naming_the_document_and_leave_no_partition() {
    let db = unique("mongo_bad");
    let coll = collection(&db, "users").await;
    coll.insert_many(vec![
        doc! { "_id": oid(1), "age": 30i32 },
        doc! { "_id": oid(2), "age": "thirty" },
    ])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("mongo_bad_lake");
    let ch_db = unique("mongo_bad_ch");
    let text = config(
        &db,
        &prefix,
        &ch_db,
        "snapshot",
        "on_mismatch = \"error\"\ninfer_sample = 1",
    );
    let path = write_config(&dir, &text);
    let out = sluice(
        &["run", "--config", path.to_str().unwrap()],
        &[("SLUICE_SNAPSHOT_DATE", &day(0))],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("650000000000000000000002") && stderr.contains("\"age\""),
        "{stderr}"
    );
    let store = s3_store();
    let listed = list(&store, &format!("{prefix}/users")).await;
    assert!(
        listed.iter().all(|(p, _)| !p.contains("/_delta_log/")),
        "{listed:?}"
    );

    // The default policy keeps the value in `_overflow` instead.
    let text = config(&db, &prefix, &ch_db, "snapshot", "infer_sample = 1");
    let path = write_config(&dir, &text);
    run_on(&path, &day(0));
    let rows = ch_lines(&format!(
        "SELECT _id, age, _overflow FROM `{ch_db}`.users ORDER BY _id"
    ))
    .await;
    assert_eq!(
        rows,
        vec![
            "650000000000000000000001|30|\\N",
            "650000000000000000000002|\\N|{\"age\":\"thirty\"}",
        ]
    );
    ch_exec(&format!("DROP DATABASE IF EXISTS `{ch_db}`")).await;
}

/// Runs `sluice run` for `day`; returns stderr (the log).
fn run_logged(config: &std::path::Path, day: &str) -> String {
    let out = sluice(
        &["run", "--config", config.to_str().unwrap()],
        &[("SLUICE_SNAPSHOT_DATE", day)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "sluice run failed ({}):\n{}\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The lake's rows under `prefix` as sorted lines (key, data columns, overflow).
async fn lake_rows(prefix: &str) -> Vec<String> {
    let store = s3_store();
    let batches = read_parquet_under(&store, &format!("{prefix}/users/")).await;
    let text = pretty_format_batches(&batches).unwrap().to_string();
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| _id"))
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_read_in_parallel_key_ranges_gives_the_same_rows() {
    let db = unique("mongo_par");
    let coll = collection(&db, "users").await;
    let states = ["Lagos", "Abuja", "Kano"];
    let docs: Vec<Document> = (0..240u32)
        .map(|i| {
            let mut bytes = [0u8; 12];
            bytes[0] = 0x66;
            bytes[8..].copy_from_slice(&(i * 7919 % 1000).to_be_bytes());
            bytes[4..8].copy_from_slice(&i.to_be_bytes());
            if i >= 100 && i % 5 == 0 {
                doc! { "_id": ObjectId::from_bytes(bytes), "uid": format!("UID{i:08}"), "n": i as i32, "extra": true }
            } else {
                doc! { "_id": ObjectId::from_bytes(bytes), "uid": format!("UID{i:08}"), "n": i as i32, "state": states[i as usize % 3] }
            }
        })
        .collect();
    coll.insert_many(docs).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let today = day(0);
    let mut results = Vec::new();
    for (parallelism, sample) in [(1, 240), (4, 240), (3, 20)] {
        let prefix = unique(&format!("mongo_par_lake_{parallelism}"));
        let ch_db = unique(&format!("mongo_par_ch_{parallelism}"));
        // `infer_sample = 20` leaves `extra` out of the schema: overflow rows.
        let extra = format!("read_parallelism = {parallelism}\ninfer_sample = {sample}");
        let path = write_config(&dir, &config(&db, &prefix, &ch_db, "snapshot", &extra));
        let log = run_logged(&path, &today);
        if parallelism > 1 {
            assert!(log.contains("Reading key ranges in parallel"), "{log}");
        }
        let rows = lake_rows(&prefix).await;
        assert_eq!(rows.len(), 240, "parallelism {parallelism}");
        let ch = ch_lines(&format!(
            "SELECT _id, uid, n, state FROM `{ch_db}`.users ORDER BY _id"
        ))
        .await;
        assert_eq!(ch.len(), 240);
        results.push((parallelism, rows, ch));
        ch_exec(&format!("DROP DATABASE IF EXISTS `{ch_db}`")).await;
    }
    assert_eq!(results[0].1, results[1].1, "lake rows: 1 vs 4 ranges");
    assert_eq!(results[0].2, results[1].2, "ClickHouse rows: 1 vs 4 ranges");
    assert_eq!(results[0].2, results[2].2, "ClickHouse rows with overflow");
    assert!(results[2].1.iter().any(|r| r.contains(r#"{"extra":true}"#)));

    // Keys of more than one type cannot be split by ranges: one cursor, all rows.
    coll.insert_many(vec![
        doc! { "_id": "k1", "n": 1i32 },
        doc! { "_id": 7i64, "n": 2i32 },
    ])
    .await
    .unwrap();
    let prefix = unique("mongo_par_lake_mixed");
    let ch_db = unique("mongo_par_ch_mixed");
    let path = write_config(
        &dir,
        &config(
            &db,
            &prefix,
            &ch_db,
            "snapshot",
            "read_parallelism = 4\non_mismatch = \"overflow\"",
        ),
    );
    let log = run_logged(&path, &today);
    assert!(log.contains("Keys of more than one type"), "{log}");
    assert_eq!(lake_rows(&prefix).await.len(), 242);
    ch_exec(&format!("DROP DATABASE IF EXISTS `{ch_db}`")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_share_a_month_partition_and_a_rerun_keeps_the_other_days() {
    let db = unique("mongo_snap_month");
    let coll = collection(&db, "users").await;
    coll.insert_many(vec![
        doc! { "_id": oid(1), "uid": "UID00000001" },
        doc! { "_id": oid(2), "uid": "UID00000002" },
    ])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("mongo_snap_month_lake");
    let ch_db = unique("mongo_snap_month_ch");
    let path = write_config(&dir, &config(&db, &prefix, &ch_db, "snapshot", ""));
    let per_day = || {
        let sql = format!(
            "SELECT _partition_id, toString(snapshot_date), count() FROM `{ch_db}`.users \
             GROUP BY 1, 2 ORDER BY 2"
        );
        async move { ch_lines(&sql).await }
    };

    run_on(&path, "2026-03-10");
    coll.insert_one(doc! { "_id": oid(3), "uid": "UID00000003" })
        .await
        .unwrap();
    run_on(&path, "2026-03-11");
    assert_eq!(
        per_day().await,
        vec!["202603|2026-03-10|2", "202603|2026-03-11|3"]
    );

    // Rerunning a day replaces that day only; its month's other day stays.
    coll.delete_one(doc! { "_id": oid(1) }).await.unwrap();
    run_on(&path, "2026-03-11");
    assert_eq!(
        per_day().await,
        vec!["202603|2026-03-10|2", "202603|2026-03-11|2"]
    );
    run_on(&path, "2026-04-01");
    assert_eq!(
        per_day().await,
        vec![
            "202603|2026-03-10|2",
            "202603|2026-03-11|2",
            "202604|2026-04-01|2"
        ]
    );
    let key = ch_lines(&format!(
        "SELECT partition_key FROM system.tables WHERE database = '{ch_db}' AND name = 'users'"
    ))
    .await;
    assert_eq!(key, vec!["toYYYYMM(snapshot_date)"]);

    // A config that now asks for day partitions is refused, naming the fix.
    let path = write_config(
        &dir,
        &config(
            &db,
            &prefix,
            &ch_db,
            "snapshot",
            "clickhouse_partition = \"day\"",
        ),
    );
    let out = sluice(
        &["run", "--config", path.to_str().unwrap()],
        &[("SLUICE_SNAPSHOT_DATE", "2026-04-02")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("clickhouse_partition = \"month\""),
        "{stderr}"
    );
    ch_exec(&format!("DROP DATABASE IF EXISTS `{ch_db}`")).await;
}
