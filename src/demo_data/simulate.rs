//! `sluice demo simulate`: one round of inserts, updates and deletes on every
//! source table, seeded so that each call changes other rows.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use mongodb::bson::{doc, Document};
use mysql::prelude::Queryable;

use super::{
    insert_rows, mongo_err, mongo_users, mysql_connect, mysql_err, pg_connect, pg_err, uid,
    user_doc, Services, STATES,
};
use crate::demo::Rng;
use crate::error::{Error, Result};

/// How many changes one `simulate` call makes at scale 1 (scaled like the data).
#[derive(Debug, Clone, Copy)]
pub struct ChangeCounts {
    pub users_insert: u64,
    pub users_update: u64,
    pub users_delete: u64,
    pub plans_insert: u64,
    pub plans_update: u64,
    pub plans_soft_delete: u64,
    pub transactions_insert: u64,
    pub transactions_update: u64,
    pub wallet_transactions_insert: u64,
    pub wallet_transactions_update: u64,
}

impl ChangeCounts {
    pub fn at(scale: f64) -> ChangeCounts {
        let n = |base: f64| ((base * scale).round() as u64).max(1);
        ChangeCounts {
            users_insert: n(500.0),
            users_update: n(1_000.0),
            users_delete: n(100.0),
            plans_insert: n(500.0),
            plans_update: n(1_000.0),
            plans_soft_delete: n(200.0),
            transactions_insert: n(10_000.0),
            transactions_update: n(2_000.0),
            wallet_transactions_insert: n(1_000.0),
            wallet_transactions_update: n(500.0),
        }
    }
}

/// One line of what `simulate` did: `table op count first..last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: &'static str,
    pub op: &'static str,
    pub count: u64,
    pub first: String,
    pub last: String,
}

/// `count` distinct numbers in `1..=max`, sorted.
fn distinct(rng: &mut Rng, max: u64, count: u64) -> Vec<u64> {
    let count = count.min(max);
    let mut seen = HashSet::new();
    while (seen.len() as u64) < count {
        seen.insert(1 + rng.below(max));
    }
    let mut ids: Vec<u64> = seen.into_iter().collect();
    ids.sort_unstable();
    ids
}

/// Splits `ids` into two disjoint sorted sets of `a` and the rest.
fn split(rng: &mut Rng, mut ids: Vec<u64>, a: usize) -> (Vec<u64>, Vec<u64>) {
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut rest = ids.split_off(a.min(ids.len()));
    ids.sort_unstable();
    rest.sort_unstable();
    (ids, rest)
}

fn change(table: &'static str, op: &'static str, count: u64, ids: &[String]) -> Change {
    Change {
        table,
        op,
        count,
        first: ids.first().cloned().unwrap_or_else(|| "-".into()),
        last: ids.last().cloned().unwrap_or_else(|| "-".into()),
    }
}

/// Applies one round of changes and writes `table op count first..last` lines.
/// The seed is mixed with the current sizes, so every call changes other rows.
pub async fn simulate<W: Write>(
    services: &Services,
    scale: f64,
    seed: u64,
    mut out: W,
) -> Result<Vec<Change>> {
    let counts = ChangeCounts::at(scale);
    let mut changes = simulate_users(&services.mongodb, counts, seed).await?;
    changes.extend(simulate_savings(&services.postgres, counts, seed).await?);
    let url = services.mysql.clone();
    changes.extend(
        tokio::task::spawn_blocking(move || simulate_wallet(&url, counts, seed))
            .await
            .map_err(|e| Error::source("transactions", e))??,
    );
    for c in &changes {
        writeln!(
            out,
            "{:<22} {:<12} {:>8}  {}..{}",
            c.table, c.op, c.count, c.first, c.last
        )
        .map_err(|e| Error::Query(e.to_string()))?;
    }
    Ok(changes)
}

async fn simulate_users(url: &str, counts: ChangeCounts, seed: u64) -> Result<Vec<Change>> {
    let coll = mongo_users(url).await?;
    let last = coll
        .find_one(doc! {})
        .sort(doc! { "_Uid": -1 })
        .projection(doc! { "_Uid": 1 })
        .await
        .map_err(mongo_err)?;
    let max = last
        .as_ref()
        .and_then(|d| d.get_str("_Uid").ok())
        .and_then(|u| u.trim_start_matches("UID").parse::<u64>().ok())
        .unwrap_or(0);
    let mut rng = Rng(seed ^ max.rotate_left(32) ^ 0x5349_4d55);
    let picked = distinct(&mut rng, max, counts.users_update + counts.users_delete);
    let (update, delete) = split(&mut rng, picked, counts.users_update as usize);
    let uids = |ids: &[u64]| ids.iter().map(|&n| uid(n)).collect::<Vec<_>>();

    // Updates move a user to the next state, so the document always changes.
    let (update, delete) = (uids(&update), uids(&delete));
    let mut cursor = coll
        .find(doc! { "_Uid": { "$in": &update } })
        .projection(doc! { "_Uid": 1, "state": 1 })
        .await
        .map_err(mongo_err)?;
    let mut moves: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    use futures::TryStreamExt;
    while let Some(d) = cursor.try_next().await.map_err(mongo_err)? {
        let state = d.get_str("state").unwrap_or("");
        let i = STATES.iter().position(|s| *s == state).map_or(0, |i| i + 1);
        moves
            .entry(STATES[i % STATES.len()])
            .or_default()
            .push(d.get_str("_Uid").unwrap_or("").to_string());
    }
    let mut updated = Vec::new();
    let mut modified = 0;
    for (state, ids) in moves {
        let r = coll
            .update_many(
                doc! { "_Uid": { "$in": &ids } },
                doc! { "$set": { "state": state } },
            )
            .await
            .map_err(mongo_err)?;
        modified += r.modified_count;
        updated.extend(ids);
    }
    updated.sort();
    let deleted = coll
        .delete_many(doc! { "_Uid": { "$in": &delete } })
        .await
        .map_err(mongo_err)?
        .deleted_count;
    let inserted: Vec<u64> = (max + 1..=max + counts.users_insert).collect();
    let docs: Vec<Document> = inserted.iter().map(|&n| user_doc(n, &mut rng)).collect();
    coll.insert_many(docs).await.map_err(mongo_err)?;
    Ok(vec![
        change("users", "insert", inserted.len() as u64, &uids(&inserted)),
        change("users", "update", modified, &updated),
        change("users", "delete", deleted, &delete),
    ])
}

async fn simulate_savings(url: &str, counts: ChangeCounts, seed: u64) -> Result<Vec<Change>> {
    let mut client = pg_connect(url).await?;
    let err = pg_err("savings_plan");
    let row = client
        .query_one(
            "SELECT (SELECT coalesce(max(plan_id), 0) FROM savings_plan),
                    (SELECT coalesce(max(transaction_id), 0) FROM savings_transaction)",
            &[],
        )
        .await
        .map_err(&err)?;
    let (max_plan, max_tx) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
    let mut rng = Rng(seed ^ max_tx.rotate_left(24) ^ max_plan ^ 0x5341_5649);
    let tx = client.transaction().await.map_err(&err)?;
    let as_i64 = |ids: &[u64]| ids.iter().map(|&n| n as i64).collect::<Vec<i64>>();
    let text = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>();

    // Plans: disjoint updates and soft deletes among the live ones, then inserts.
    let picked = distinct(
        &mut rng,
        max_plan,
        counts.plans_update + counts.plans_soft_delete,
    );
    let (update, delete) = split(&mut rng, picked, counts.plans_update as usize);
    let updated = tx
        .query(
            "UPDATE savings_plan SET target_amount = target_amount + 1000,
                    status = CASE status WHEN 'active' THEN 'paused' ELSE 'active' END,
                    updated_at = clock_timestamp()
             WHERE plan_id = ANY($1) AND deleted_at IS NULL RETURNING plan_id",
            &[&as_i64(&update)],
        )
        .await
        .map_err(&err)?;
    let deleted = tx
        .query(
            "UPDATE savings_plan SET deleted_at = clock_timestamp(), updated_at = clock_timestamp()
             WHERE plan_id = ANY($1) AND deleted_at IS NULL RETURNING plan_id",
            &[&as_i64(&delete)],
        )
        .await
        .map_err(&err)?;
    let ids_of = |rows: &[tokio_postgres::Row]| {
        let mut ids: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        ids.sort_unstable();
        text(&ids)
    };
    let new_plans: Vec<u64> = (max_plan + 1..=max_plan + counts.plans_insert).collect();
    let plan_users: Vec<String> = new_plans
        .iter()
        .map(|_| uid(1 + rng.below(max_plan.max(1))))
        .collect();
    tx.execute(
        "INSERT INTO savings_plan
         SELECT id, u, 'Plan ' || id, 10000 + (id % 100) * 500, 'monthly', 'active',
                current_date, current_date + 90, clock_timestamp(), clock_timestamp(), NULL
         FROM unnest($1::bigint[], $2::text[]) AS t(id, u)",
        &[&as_i64(&new_plans), &plan_users],
    )
    .await
    .map_err(&err)?;

    // Transactions: updates among the existing ones, inserts on random plans.
    let err = pg_err("savings_transaction");
    let update_tx = distinct(&mut rng, max_tx, counts.transactions_update);
    let updated_tx = tx
        .query(
            "UPDATE savings_transaction SET amount = amount + 1, updated_at = clock_timestamp()
             WHERE transaction_id = ANY($1) AND deleted_at IS NULL RETURNING transaction_id",
            &[&as_i64(&update_tx)],
        )
        .await
        .map_err(&err)?;
    let new_tx: Vec<u64> = (max_tx + 1..=max_tx + counts.transactions_insert).collect();
    let tx_plans: Vec<i64> = new_tx
        .iter()
        .map(|_| 1 + rng.below(max_plan + counts.plans_insert) as i64)
        .collect();
    tx.execute(
        "INSERT INTO savings_transaction
         SELECT t.id, t.plan_id, p.user_id, 100 + (t.id * 7919) % 500000 / 100.0, 'NGN',
                CASE WHEN t.id % 5 = 0 THEN 'withdrawal' ELSE 'deposit' END,
                clock_timestamp(), clock_timestamp(), NULL
         FROM unnest($1::bigint[], $2::bigint[]) AS t(id, plan_id)
         JOIN savings_plan p USING (plan_id)",
        &[&as_i64(&new_tx), &tx_plans],
    )
    .await
    .map_err(&err)?;
    tx.commit().await.map_err(&err)?;
    Ok(vec![
        change(
            "savings_plan",
            "insert",
            new_plans.len() as u64,
            &text(&new_plans),
        ),
        change(
            "savings_plan",
            "update",
            updated.len() as u64,
            &ids_of(&updated),
        ),
        change(
            "savings_plan",
            "soft_delete",
            deleted.len() as u64,
            &ids_of(&deleted),
        ),
        change(
            "savings_transaction",
            "insert",
            new_tx.len() as u64,
            &text(&new_tx),
        ),
        change(
            "savings_transaction",
            "update",
            updated_tx.len() as u64,
            &ids_of(&updated_tx),
        ),
    ])
}

fn simulate_wallet(url: &str, counts: ChangeCounts, seed: u64) -> Result<Vec<Change>> {
    let mut conn = mysql_connect(url)?;
    let err = mysql_err("transactions");
    let sizes: Option<(u64, u64, u64)> = conn
        .query_first(
            "SELECT (SELECT coalesce(max(transaction_id), 0) FROM transactions),
                    (SELECT count(*) FROM users), (SELECT count(*) FROM merchants)",
        )
        .map_err(&err)?;
    let (max_tx, users, merchants) = sizes.unwrap_or_default();
    let mut rng = Rng(seed ^ max_tx.rotate_left(16) ^ 0x5741_4c4c);
    // Updates settle pending transactions (or retry failed ones): the status changes.
    let update = distinct(&mut rng, max_tx, counts.wallet_transactions_update);
    let list = update
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    conn.query_drop(format!(
        "UPDATE transactions SET status = IF(status = 'SUCCESS', 'FAILED', 'SUCCESS'),
                updated_at = UTC_TIMESTAMP() WHERE transaction_id IN ({list})"
    ))
    .map_err(&err)?;
    let updated = conn.affected_rows();
    let new: Vec<u64> = (max_tx + 1..=max_tx + counts.wallet_transactions_insert).collect();
    let rows: Vec<String> = new
        .iter()
        .map(|id| {
            let cents = rng.below(500_000);
            format!(
                "({id},{},{},{}.{:02},'PENDING',UTC_TIMESTAMP(),UTC_TIMESTAMP())",
                1 + rng.below(users.max(1)),
                1 + rng.below(merchants.max(1)),
                cents / 100,
                cents % 100
            )
        })
        .collect();
    insert_rows(&mut conn, "transactions", rows.into_iter())?;
    let text = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>();
    Ok(vec![
        change(
            "wallet_transactions",
            "insert",
            new.len() as u64,
            &text(&new),
        ),
        change("wallet_transactions", "update", updated, &text(&update)),
    ])
}
