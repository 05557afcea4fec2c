#!/usr/bin/env bash
# What `detect_deletes = true` costs (issue 23): the fintech `savings_transaction`
# table of `sluice demo generate` (about 3M rows over a year at scale 1.0) moved
# PostgreSQL → S3 lake → ClickHouse by a release sluice, then:
#
#   1. a rerun with nothing changed, detect_deletes off     (the baseline no-op run)
#   2. the same with detect_deletes on                      (the cost with no deletes)
#   3. 100 rows deleted on 10 days, detect_deletes on       (the cost of finding them)
#
#   benches/detect_deletes.sh [SCALE]        SCALE defaults to 1.0
#
# Prints each run's wall seconds and the log's "Deletes …" line (days compared,
# differing, rewritten, seconds), then checks ClickHouse against the source. A
# measurement, not a test: nothing is asserted on time. Uses its own databases
# `sluice_bench_deletes`, an S3 prefix and a ClickHouse database of that name, all
# dropped at the end. SLUICE_BIN=path/to/sluice skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

SCALE="${1:-1.0}"
DB=sluice_bench_deletes
export PGOPTIONS="-c client_min_messages=warning"
PG="postgres://sluice:sluice@127.0.0.1:5432"
MY="mysql://sluice:sluice@127.0.0.1:3306"
CH="${SLUICE_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123}"
MONGO_BASE="${SLUICE_TEST_MONGO_URL:-mongodb://127.0.0.1:27017}"
MONGO_BASE="${MONGO_BASE%%\?*}"
export SLUICE_DEMO_PG_URL="$PG/$DB" SLUICE_DEMO_MYSQL_URL="$MY/$DB"
export SLUICE_DEMO_MONGO_URL="${MONGO_BASE%/}/$DB?directConnection=true"

eval "$(scripts/services.sh up | sed -n 's/^  \(AWS_[A-Z_]*=\)/export \1/p' | sed 's/  (bucket.*//')"
if [[ -n ${SLUICE_BIN:-} ]]; then
  SLUICE="$SLUICE_BIN"
else
  cargo build --release --locked --quiet
  SLUICE="$CARGO_TARGET_DIR/release/sluice"
fi

WORK="$(mktemp -d -t sluice-deletes.XXXXXX)"
PREFIX="bench_deletes_$(date +%s)"
drop_all() {
  psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  mysql -usluice -psluice -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  python3 -c "import sys, pymongo; pymongo.MongoClient(sys.argv[1]).drop_database('$DB')" \
    "${MONGO_BASE%/}/?directConnection=true" >/dev/null 2>&1 || true
  curl -sf "$CH" --data-binary "DROP DATABASE IF EXISTS $DB" >/dev/null || true
  python3 - "$PREFIX" <<'EOF' >/dev/null 2>&1 || true
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix=sys.argv[1] + "/"):
    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
    if keys:
        s3.delete_objects(Bucket="lake", Delete={"Objects": keys})
EOF
}
cleanup() {
  drop_all
  rm -rf "$WORK"
}
trap cleanup EXIT

drop_all
psql -q "$PG/sluice" -c "CREATE DATABASE $DB"
mysql -usluice -psluice -h127.0.0.1 -e "CREATE DATABASE $DB"
echo "== generating the fintech data set (scale $SCALE)" >&2
"$SLUICE" --quiet demo generate --scale "$SCALE" >/dev/null
psql -q "$PG/$DB" -c "VACUUM ANALYZE savings_transaction"

config() {
  cat <<EOF
[lake]
url = "s3://lake/$PREFIX"

[sources.savings]
kind = "postgres"
url = "$PG/$DB"

[clickhouse]
url = "$CH"
database = "$DB"

[[table]]
name = "savings_transaction"
source = "savings"
source_table = "public.savings_transaction"
cursor = "updated_at"
key = ["transaction_id"]
partition_by = "created_at"
clickhouse_partition = "month"
$1
EOF
}
# The "off" config leaves the setting out, so that a binary from before it can
# time the baseline (SLUICE_BIN=old ends at the first "on" run).
config "" >"$WORK/off.toml"
config "detect_deletes = true" >"$WORK/on.toml"

run() {
  local label=$1 cfg=$2 start end
  start=$(date +%s.%N)
  "$SLUICE" run --config "$cfg" >"$WORK/run.out" 2>"$WORK/run.err"
  end=$(date +%s.%N)
  printf '%-48s %7.2f s  %s\n' "$label" "$(echo "$end - $start" | bc)" \
    "$(grep -o 'Deletes[^"]*"\?.*' "$WORK/run.err" | sed 's/\x1b\[[0-9;]*m//g' | head -1)"
}

run "full load (detect_deletes off)" "$WORK/off.toml"
run "no-op rerun, detect_deletes off" "$WORK/off.toml"
run "no-op rerun, detect_deletes off (again)" "$WORK/off.toml"
run "no-op rerun, detect_deletes on (no deletes)" "$WORK/on.toml"
run "no-op rerun, detect_deletes on (again)" "$WORK/on.toml"
# 100 rows on 10 days spread over the year: the 10 first ids of each day.
psql -q "$PG/$DB" -c "
  WITH days AS (
    SELECT day FROM (
      SELECT day, row_number() OVER (ORDER BY day) AS i
      FROM (SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date AS day FROM savings_transaction) d) x
    WHERE i % 30 = 0 LIMIT 10),
  victims AS (
    SELECT transaction_id FROM (
      SELECT transaction_id, (created_at AT TIME ZONE 'UTC')::date AS day,
             row_number() OVER (PARTITION BY (created_at AT TIME ZONE 'UTC')::date ORDER BY transaction_id) AS n
      FROM savings_transaction) t
    WHERE n <= 10 AND day IN (SELECT day FROM days))
  DELETE FROM savings_transaction WHERE transaction_id IN (SELECT transaction_id FROM victims)"
echo "deleted: $(( $(curl -sf "$CH" --data-binary "SELECT count() FROM $DB.savings_transaction") - $(psql -tA "$PG/$DB" -c 'SELECT count(*) FROM savings_transaction') )) rows" >&2
run "100 rows deleted on 10 days, detect_deletes on" "$WORK/on.toml"
run "no-op rerun, detect_deletes on" "$WORK/on.toml"
src=$(psql -tA "$PG/$DB" -c 'SELECT count(*) FROM savings_transaction')
ch=$(curl -sf "$CH" --data-binary "SELECT count() FROM $DB.savings_transaction")
echo "source $src rows, ClickHouse $ch rows: $([[ $src == "$ch" ]] && echo ok || echo MISMATCH)"
