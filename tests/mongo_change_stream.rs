//! MongoDB (SecantusDB) change streams → lake on S3 → ClickHouse
//! (`mode = "change_stream"`), end to end on the real services: the first run's
//! snapshot, inserts / updates / deletes between runs, a no-op rerun, crashes at
//! every commit-relevant point, and a resume token the server no longer has.

mod common;

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{UInt64Type, UInt8Type};
use common::*;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

async fn collection(db: &str) -> mongodb::Collection<Document> {
    let client = mongodb::Client::with_uri_str(mongo_url(db))
        .await
        .unwrap_or_else(|e| panic!("MongoDB (run scripts/services.sh up): {e}"));
    client.database(db).collection("users")
}

fn oid(n: u8) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[0] = 0x65;
    bytes[11] = n;
    ObjectId::from_bytes(bytes)
}

fn user(n: u8, state: &str) -> Document {
    doc! { "_id": oid(n), "uid": format!("UID{n:08}"), "state": state }
}

/// One test's MongoDB database, lake prefix, ClickHouse database and config.
struct Setup {
    db: String,
    prefix: String,
    ch_db: String,
    coll: mongodb::Collection<Document>,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Setup {
    async fn new(test: &str) -> Self {
        let db = unique(test);
        let prefix = unique(&format!("{test}_lake"));
        let ch_db = unique(&format!("{test}_ch"));
        let coll = collection(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            &dir,
            &format!(
                r#"
[lake]
url = "s3://{bucket}/{prefix}"

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
mode = "change_stream"
batch_rows = 3
"#,
                bucket = s3_bucket(),
                mongo = mongo_url(&db),
                ch = clickhouse_url(),
                ch_s3 = clickhouse_s3_endpoint(),
            ),
        );
        Self {
            db,
            prefix,
            ch_db,
            coll,
            _dir: dir,
            config,
        }
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    async fn run_ok(&self) -> String {
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || sluice_run_ok(&config))
            .await
            .unwrap()
    }

    async fn sluice(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            sluice(&args, &env)
        })
        .await
        .unwrap()
    }

    /// Runs with a fault point armed; the process must die there.
    async fn run_killed_at(&self, fault: &str) {
        let out = self
            .sluice(&["run", "--config", self.cfg()], &[("SLUICE_FAULT", fault)])
            .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the run survived its fault {fault}:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("fault injected at {fault}")),
            "the run failed before reaching {fault}:\n{stderr}"
        );
    }

    /// `_id|state` of every document in MongoDB, by `_id`.
    async fn source(&self) -> Vec<String> {
        let mut cursor = self
            .coll
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .unwrap();
        let mut out = Vec::new();
        while cursor.advance().await.unwrap() {
            let d = cursor.deserialize_current().unwrap();
            out.push(format!(
                "{}|{}",
                d.get_object_id("_id").unwrap().to_hex(),
                d.get_str("state").unwrap()
            ));
        }
        out
    }

    /// `_id|state` of the current state in ClickHouse (`FINAL`).
    async fn ch_current(&self) -> Vec<String> {
        ch_lines(&format!(
            "SELECT _id, state FROM `{}`.users_current FINAL ORDER BY _id",
            self.ch_db
        ))
        .await
    }

    /// Every change row in ClickHouse as `_id|state|_op|_is_deleted`, in change order.
    async fn ch_changes(&self) -> Vec<String> {
        ch_lines(&format!(
            "SELECT _id, state, _op, _is_deleted FROM `{}`.users ORDER BY _version, _id",
            self.ch_db
        ))
        .await
    }

    /// The lake's change rows as `(_id, _version) → (state, _op, _is_deleted)`,
    /// read from the files the manifest lists; panics on a duplicate.
    async fn lake_changes(&self) -> BTreeMap<(String, u64), (Option<String>, String, u8)> {
        let store = s3_store();
        let manifest = self.manifest().await;
        let mut rows = BTreeMap::new();
        for partition in manifest["partitions"].as_object().unwrap().values() {
            for file in partition["files"].as_array().unwrap() {
                let path = format!("{}/users/{}", self.prefix, file["path"].as_str().unwrap());
                let bytes = store
                    .get(&ObjectPath::from(path.as_str()))
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                        .unwrap()
                        .build()
                        .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let ids = batch.column_by_name("_id").unwrap().as_string::<i32>();
                    let states = batch.column_by_name("state").unwrap().as_string::<i32>();
                    let ops = batch.column_by_name("_op").unwrap().as_string::<i32>();
                    let versions = batch
                        .column_by_name("_version")
                        .unwrap()
                        .as_primitive::<UInt64Type>();
                    let deleted = batch
                        .column_by_name("_is_deleted")
                        .unwrap()
                        .as_primitive::<UInt8Type>();
                    for i in 0..batch.num_rows() {
                        let state = (!states.is_null(i)).then(|| states.value(i).to_string());
                        let before = rows.insert(
                            (ids.value(i).to_string(), versions.value(i)),
                            (state, ops.value(i).to_string(), deleted.value(i)),
                        );
                        assert!(
                            before.is_none(),
                            "duplicate change row in the lake: {}",
                            ids.value(i)
                        );
                    }
                }
            }
        }
        rows
    }

    /// The lake's current state: the latest change of each key, deletes left out.
    async fn lake_current(&self) -> Vec<String> {
        let mut latest: BTreeMap<String, (u64, Option<String>, u8)> = BTreeMap::new();
        for ((id, version), (state, _, deleted)) in self.lake_changes().await {
            let entry = latest.entry(id).or_insert((0, None, 1));
            if version >= entry.0 {
                *entry = (version, state, deleted);
            }
        }
        latest
            .into_iter()
            .filter(|(_, (_, _, deleted))| *deleted == 0)
            .map(|(id, (_, state, _))| format!("{id}|{}", state.unwrap_or_default()))
            .collect()
    }

    async fn manifest(&self) -> serde_json::Value {
        s3_table_state(&self.prefix, "users").await
    }

    /// The source, the lake and ClickHouse all hold the same current state, and
    /// the lake and ClickHouse the same `expected` number of change rows.
    async fn assert_converged(&self, expected_changes: usize) {
        let source = self.source().await;
        assert_eq!(self.ch_current().await, source, "ClickHouse current state");
        assert_eq!(self.lake_current().await, source, "lake current state");
        assert_eq!(
            self.lake_changes().await.len(),
            expected_changes,
            "lake change rows"
        );
        let counts = ch_lines(&format!(
            "SELECT count(), uniqExact(_id, _version) FROM `{}`.users",
            self.ch_db
        ))
        .await;
        assert_eq!(
            counts,
            vec![format!("{expected_changes}|{expected_changes}")],
            "ClickHouse change rows (all, distinct)"
        );
    }

    async fn drop(self) {
        ch_exec(&format!("DROP DATABASE IF EXISTS `{}`", self.ch_db)).await;
        let _ = self.coll.client().database(&self.db).drop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn change_stream_snapshot_then_inserts_updates_and_deletes() {
    let s = Setup::new("cs_basic").await;
    s.coll
        .insert_many((1..=5).map(|n| user(n, "Lagos")))
        .await
        .unwrap();

    // First run: a snapshot of the five documents, as inserts.
    s.run_ok().await;
    let snapshot: Vec<String> = (1..=5)
        .map(|n| format!("{}|Lagos|insert|0", oid(n).to_hex()))
        .collect();
    assert_eq!(s.ch_changes().await, snapshot);
    s.assert_converged(5).await;

    // Between runs: an insert, the same document updated twice, a replace, a
    // delete, and a document inserted then deleted.
    s.coll.insert_one(user(6, "Kano")).await.unwrap();
    for state in ["Oyo", "Edo"] {
        s.coll
            .update_one(doc! { "_id": oid(2) }, doc! { "$set": { "state": state } })
            .await
            .unwrap();
    }
    s.coll
        .replace_one(doc! { "_id": oid(3) }, user(3, "Abia"))
        .await
        .unwrap();
    s.coll.delete_one(doc! { "_id": oid(4) }).await.unwrap();
    s.coll.insert_one(user(7, "Ogun")).await.unwrap();
    s.coll.delete_one(doc! { "_id": oid(7) }).await.unwrap();
    // Updated, then deleted: the update's lookup finds nothing and is skipped.
    s.coll
        .update_one(doc! { "_id": oid(5) }, doc! { "$set": { "state": "Oyo" } })
        .await
        .unwrap();
    s.coll.delete_one(doc! { "_id": oid(5) }).await.unwrap();
    // One transaction: its changes share a cluster time, and their order decides.
    let mut session = s.coll.client().start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    for state in ["Benue", "Borno"] {
        s.coll
            .update_one(doc! { "_id": oid(1) }, doc! { "$set": { "state": state } })
            .session(&mut session)
            .await
            .unwrap();
    }
    s.coll
        .insert_one(user(8, "Yobe"))
        .session(&mut session)
        .await
        .unwrap();
    s.coll
        .delete_one(doc! { "_id": oid(8) })
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    s.run_ok().await;

    let h = |n: u8| oid(n).to_hex();
    let mut expected = snapshot.clone();
    expected.extend([
        format!("{}|Kano|insert|0", h(6)),
        // updateLookup: both updates carry the document as it is when read.
        format!("{}|Edo|update|0", h(2)),
        format!("{}|Edo|update|0", h(2)),
        format!("{}|Abia|update|0", h(3)),
        format!("{}|\\N|delete|1", h(4)),
        format!("{}|Ogun|insert|0", h(7)),
        format!("{}|\\N|delete|1", h(7)),
        format!("{}|\\N|delete|1", h(5)),
        // The transaction: same cluster time, versions ordered within each key.
        format!("{}|Borno|update|0", h(1)),
        format!("{}|Yobe|insert|0", h(8)),
        format!("{}|Borno|update|0", h(1)),
        format!("{}|\\N|delete|1", h(8)),
    ]);
    assert_eq!(s.ch_changes().await, expected);
    assert_eq!(
        s.ch_current().await,
        vec![
            format!("{}|Borno", h(1)),
            format!("{}|Edo", h(2)),
            format!("{}|Abia", h(3)),
            format!("{}|Kano", h(6)),
        ]
    );
    s.assert_converged(17).await;
    // The change rows' ops in the lake are the same as in ClickHouse.
    let mut ops: Vec<String> = s
        .lake_changes()
        .await
        .values()
        .map(|(_, op, _)| op.clone())
        .collect();
    ops.sort();
    let mut expected_ops: Vec<String> = expected
        .iter()
        .map(|l| l.split('|').nth(2).unwrap().to_string())
        .collect();
    expected_ops.sort();
    assert_eq!(ops, expected_ops);

    // A rerun with no change adds nothing: same files, same rows.
    let files_before = s.manifest().await["partitions"].clone();
    s.run_ok().await;
    assert_eq!(s.manifest().await["partitions"], files_before);
    assert_eq!(s.ch_changes().await, expected);
    s.assert_converged(17).await;

    // `sluice query --as-of` reads the lake's change table as its current state.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let out = s
        .sluice(
            &[
                "query",
                "--config",
                s.cfg(),
                "--as-of",
                &today,
                "--format",
                "csv",
                "SELECT _id, state FROM users ORDER BY _id",
            ],
            &[],
        )
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = text.lines().skip(1).map(|l| l.replace(',', "|")).collect();
    assert_eq!(lines, s.source().await);

    // `state show` and `--dry-run` tell where the stream resumes.
    let out = s.sluice(&["state", "show", "--config", s.cfg()], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("users (change_stream)")
            && text.contains("change stream: resumes after the stored resume token")
            && text.contains("13 event(s) since the snapshot"),
        "{text}"
    );
    let out = s
        .sluice(&["run", "--dry-run", "--config", s.cfg()], &[])
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("change stream of \"users\"") && text.contains("until caught up"),
        "{text}"
    );
    s.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn change_stream_crash_at_any_point_neither_loses_nor_duplicates() {
    let s = Setup::new("cs_crash").await;
    s.coll
        .insert_many((1..=5).map(|n| user(n, "Lagos")))
        .await
        .unwrap();
    // The first run dies after writing its snapshot, before following the stream
    // (the snapshot and the first stream read are committed together).
    s.run_killed_at("change_stream.after_snapshot").await;
    s.coll.insert_one(user(6, "Kano")).await.unwrap();
    s.run_ok().await;
    s.assert_converged(6).await;

    let mut expected = 6;
    // The table driver's crash points, the same for every capture mode.
    let faults = [
        "change_stream.batch",
        "lake.before_commit",
        // The rows and the resume token that follows them are one manifest PUT:
        // this is right after both, before ClickHouse has them.
        "lake.after_commit",
        "warehouse.after_stage_insert",
        "warehouse.after_replace",
        "run.before_final_commit",
    ];
    for (i, fault) in faults.iter().enumerate() {
        let n = 10 + i as u8;
        s.coll.insert_one(user(n, "Kwara")).await.unwrap();
        s.coll
            .update_one(
                doc! { "_id": oid(1) },
                doc! { "$set": { "state": format!("Delta-{i}") } },
            )
            .await
            .unwrap();
        let previous = if i == 0 { 6 } else { n - 1 };
        s.coll
            .delete_one(doc! { "_id": oid(previous) })
            .await
            .unwrap();
        s.run_killed_at(fault).await;
        // More changes while the run is down: read with the rest by the next run.
        s.coll
            .update_one(
                doc! { "_id": oid(n) },
                doc! { "$set": { "state": format!("Imo-{i}") } },
            )
            .await
            .unwrap();
        s.run_ok().await;
        expected += 4;
        s.assert_converged(expected).await;
    }
    s.drop().await;
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A resume token for the same collection but at a point the oplog no longer
/// holds: SecantusDB's tokens are hex BSON with an oplog sequence `s`; real
/// MongoDB's are KeyStrings starting with the cluster time.
fn expired(token: &str) -> String {
    match Document::from_reader(hex_decode(token).as_slice()) {
        Ok(mut d) => {
            let zero = match d.get("s") {
                Some(Bson::Int32(_)) => Bson::Int32(0),
                _ => Bson::Int64(0),
            };
            d.insert("s", zero);
            d.insert(
                "t",
                mongodb::bson::Timestamp {
                    time: 1,
                    increment: 1,
                },
            );
            let mut bytes = Vec::new();
            d.to_writer(&mut bytes).unwrap();
            hex_encode(&bytes)
        }
        Err(_) => "8200000001000000012B0229296E04".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_resume_token_asks_for_a_reset_and_full_refresh_recovers() {
    let s = Setup::new("cs_expired").await;
    s.coll
        .insert_many((1..=4).map(|n| user(n, "Lagos")))
        .await
        .unwrap();
    s.run_ok().await;
    s.assert_converged(4).await;

    // The oplog rolls over past the stored position: the table's committed
    // position is replaced by one the server no longer has.
    let lake = open_lake(&format!("s3://{}/{}", s3_bucket(), s.prefix));
    let mut state = lake.read_manifest("users").await.unwrap().unwrap();
    let mut position = serde_json::to_value(&state.change_stream).unwrap();
    let token = position["resume_token"]["_data"]
        .as_str()
        .expect("a resume token after the first run")
        .to_string();
    position["resume_token"]["_data"] = expired(&token).into();
    state.change_stream = serde_json::from_value(position).unwrap();
    state.version += 1;
    lake.write_manifest(&state).await.unwrap();
    // Meanwhile a document is deleted: its delete event is among the lost history.
    s.coll.delete_one(doc! { "_id": oid(2) }).await.unwrap();

    let out = s.sluice(&["run", "--config", s.cfg()], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot resume from the stored position")
            && stderr.contains("sluice state reset --table users")
            && stderr.contains("sluice run --full-refresh --table users"),
        "{stderr}"
    );

    // A full refresh re-snapshots, and ClickHouse no longer shows the lost delete's key.
    let out = s
        .sluice(
            &[
                "run",
                "--full-refresh",
                "--table",
                "users",
                "--config",
                s.cfg(),
            ],
            &[],
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.assert_converged(3).await;
    assert!(!s
        .ch_current()
        .await
        .iter()
        .any(|l| l.starts_with(&oid(2).to_hex())));
    s.drop().await;
}
