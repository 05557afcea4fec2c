#!/usr/bin/env bash
# Benchmark of the e-wallet SQL models (sql/ewallet) on the demo data, and the same
# marts computed by ClickHouse from raw tables.
#
#   scripts/bench_models.sh [TRANSACTIONS] [debug|release]   defaults: 3000000 debug
#
# 1. seeds PostgreSQL database `sluice_bench_models` with examples/ewallet_seed.sql,
#    scaled to TRANSACTIONS rows over the same 29 days;
# 2. `sluice run` into a local-folder lake (no ClickHouse), which runs the models
#    after the tables, then `sluice models` alone: each prints seconds per model;
# 3. ClickHouse: the same raw tables generated with numbers() (same formulas), then
#    the fact_sales and user_daily_amount SQL materialised with INSERT … SELECT.
#
# A measurement, not a test. The database, lake folder and ClickHouse database are
# removed at the end unless SLUICE_BENCH_KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

ROWS="${1:-3000000}"
PROFILE="${2:-debug}"
[[ $ROWS =~ ^[0-9]+$ && $ROWS -ge 1000 ]] || { echo "usage: $0 [ROWS >= 1000] [debug|release]" >&2; exit 2; }
export PGOPTIONS="-c client_min_messages=warning" EWALLET_PG_PASSWORD="${EWALLET_PG_PASSWORD:-sluice}"
PG="postgres://sluice:${EWALLET_PG_PASSWORD}@127.0.0.1:5432"
CH_URL="${SLUICE_BENCH_CLICKHOUSE_URL:-http://127.0.0.1:8123/}"
ch() { curl -fsS -m 1800 "$CH_URL" --data-binary "$1"; }
DB=sluice_bench_models
WORK="$(mktemp -d)"
cleanup() {
    if [[ ${SLUICE_BENCH_KEEP:-} != 1 ]]; then
        psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
        ch "DROP DATABASE IF EXISTS $DB" || true
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

scripts/services.sh up >/dev/null
if [[ $PROFILE == release ]]; then
    cargo build --locked --release --quiet
else
    cargo build --locked --quiet
fi
SLUICE="$CARGO_TARGET_DIR/$PROFILE/sluice"

# Seconds between transactions, so that ROWS of them span the demo's 29 days.
STEP=$(awk -v n="$ROWS" 'BEGIN { printf "%.6f", 50000 * 50 / n }')
echo "== seeding $ROWS transactions (one every $STEP s)"
psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
sed -e "s/generate_series(1::bigint, 50000)/generate_series(1::bigint, $ROWS)/" \
    -e "s/interval '50 seconds'/interval '$STEP seconds'/" examples/ewallet_seed.sql |
    psql -q -v ON_ERROR_STOP=1 "$PG/$DB"

# The example config, on a local lake, without ClickHouse.
sed -e "s|path = \"../sql/ewallet\"|path = \"$PWD/sql/ewallet\"|" \
    -e "s|url = \"s3://lake/ewallet\"|url = \"$WORK/lake\"|" \
    -e "s|5432/ewallet\"|5432/$DB\"|" \
    -e '/^\[clickhouse\]/,/^$/d' examples/ewallet.toml >"$WORK/bench.toml"

echo "== sluice run (tables, then models) [$PROFILE build]"
/usr/bin/time -f "sluice run: %e s, peak RSS %M KB" "$SLUICE" run -q --config "$WORK/bench.toml"
echo "== sluice models (models only)"
/usr/bin/time -f "sluice models: %e s, peak RSS %M KB" "$SLUICE" models -q --config "$WORK/bench.toml"

echo "== ClickHouse: raw tables generated in place, then the marts' SQL"
ch "DROP DATABASE IF EXISTS $DB"
ch "CREATE DATABASE $DB"
ch "CREATE TABLE $DB.users (user_id Int64, full_name String, email String, state Nullable(String), created_at DateTime64(6, 'UTC'), updated_at DateTime64(6, 'UTC')) ENGINE = MergeTree PARTITION BY toYYYYMMDD(created_at) ORDER BY user_id"
ch "CREATE TABLE $DB.merchants (merchant_id Int64, name String, category String, created_at DateTime64(6, 'UTC'), updated_at DateTime64(6, 'UTC')) ENGINE = MergeTree PARTITION BY toYYYYMMDD(created_at) ORDER BY merchant_id"
ch "CREATE TABLE $DB.transactions (transaction_id Int64, user_id Int64, merchant_id Int64, amount Decimal(38, 10), status String, transaction_time DateTime64(6, 'UTC'), updated_at DateTime64(6, 'UTC')) ENGINE = MergeTree PARTITION BY toYYYYMMDD(transaction_time) ORDER BY transaction_id"
ch "INSERT INTO $DB.users SELECT number, concat('User ', toString(number)), concat('user', toString(number), '@example.com'), 'Lagos', now64(6) - toIntervalDay(60) + toIntervalMinute(30 * number), now64(6) FROM numbers(1, 2000)"
ch "INSERT INTO $DB.merchants SELECT number, concat('Merchant ', toString(number)), 'grocery', now64(6) - toIntervalDay(90) + toIntervalHour(6 * number), now64(6) FROM numbers(1, 200)"
ch "INSERT INTO $DB.transactions SELECT number, 1 + (number * 7919) % 2000, 1 + (number * 104729) % 200, toDecimal128(((number * 7919) % 500000) / 100, 10), multiIf(number % 10 = 0, 'FAILED', number % 10 = 1, 'PENDING', 'SUCCESS'), toStartOfDay(now64(6)) - toIntervalDay(29) + toIntervalMicrosecond(toUInt64($STEP * 1000000) * number), now64(6) FROM numbers(1, $ROWS) SETTINGS max_partitions_per_insert_block = 1000"
ch "CREATE TABLE $DB.fact_sales (transaction_id Int64, user_key String, merchant_key String, user_id Int64, merchant_id Int64, amount Decimal(38, 10), amount_category String, transaction_time DateTime64(6, 'UTC'), transaction_date Date32) ENGINE = MergeTree PARTITION BY toYYYYMMDD(transaction_date) ORDER BY transaction_id"
ch "CREATE TABLE $DB.user_daily_amount (user_key String, user_id Int64, transaction_date Date32, total_amount Decimal(38, 10), transaction_count UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(transaction_date) ORDER BY (user_id, transaction_date)"
time_ch() {
    local start end
    start=$(date +%s.%N)
    ch "$2"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v n="$1" 'BEGIN { printf "ClickHouse %s: %.2f s\n", n, e - s }'
}
time_ch fact_sales "INSERT INTO $DB.fact_sales SELECT t.transaction_id, u.user_key, m.merchant_key, t.user_id, t.merchant_id, t.amount,
       multiIf(t.amount < 1000, 'Low', t.amount < 3000, 'Medium', 'High'), t.transaction_time, toDate32(t.transaction_time)
FROM $DB.transactions AS t
LEFT JOIN (SELECT lower(hex(MD5(concat('user:', toString(user_id))))) AS user_key, user_id FROM $DB.users) AS u ON u.user_id = t.user_id
LEFT JOIN (SELECT lower(hex(MD5(concat('merchant:', toString(merchant_id))))) AS merchant_key, merchant_id FROM $DB.merchants) AS m ON m.merchant_id = t.merchant_id
WHERE t.status = 'SUCCESS' SETTINGS max_partitions_per_insert_block = 1000"
time_ch user_daily_amount "INSERT INTO $DB.user_daily_amount SELECT user_key, user_id, transaction_date, sum(amount), count()
FROM $DB.fact_sales GROUP BY user_key, user_id, transaction_date SETTINGS max_partitions_per_insert_block = 1000"
echo "rows: fact_sales $(ch "SELECT count() FROM $DB.fact_sales"), user_daily_amount $(ch "SELECT count() FROM $DB.user_daily_amount")"
