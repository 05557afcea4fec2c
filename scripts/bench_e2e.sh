#!/usr/bin/env bash
# End-to-end benchmark: PostgreSQL → Parquet lake (folder or S3) → ClickHouse.
#
#   scripts/bench_e2e.sh [ROWS]        ROWS defaults to 1,000,000
#
# Starts the services (scripts/services.sh up), builds the release binary, seeds a
# PostgreSQL database `sluice_bench` with a `transactions` table of ROWS rows (and a
# `transactions_quarter` table of ROWS/4 rows, for the memory check), then times
# each scenario with /usr/bin/time -v and prints rows, seconds, rows/s and peak RSS:
#
#   a   full load PostgreSQL → local-folder lake (no ClickHouse)
#   a/4 the same on ROWS/4 rows: peak RSS should not grow with the row count
#   b   full load PostgreSQL → S3 lake → ClickHouse (fresh prefix and database)
#   c   incremental run of b after updating 1% of the rows and inserting 1% new ones
#   d   no-op rerun of b
#   e   the source's own limit: psql \copy of the whole table in binary to /dev/null
#
# A measurement, not a test: nothing here fails on a number. Everything it creates
# (the database, the ClickHouse databases, the lake folders and S3 prefixes) is
# removed at the end, also when it fails. SLUICE_BENCH_KEEP=1 keeps it;
# SLUICE_BIN=path/to/sluice skips the build and times that binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

ROWS="${1:-1000000}"
[[ $ROWS =~ ^[0-9]+$ && $ROWS -ge 400 ]] || { echo "usage: $0 [ROWS >= 400]" >&2; exit 2; }
QUARTER=$((ROWS / 4))
CHANGED=$((ROWS / 100))

# The same defaults as scripts/services.sh; override them to point elsewhere.
export AWS_ENDPOINT="${AWS_ENDPOINT:-http://127.0.0.1:9000}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-sluiceaccess}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-sluicesecret123}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ALLOW_HTTP="${AWS_ALLOW_HTTP:-true}"
export BENCH_PG_PASSWORD="${BENCH_PG_PASSWORD:-sluice}"
export PGOPTIONS="-c client_min_messages=warning"
PG="postgres://sluice:${BENCH_PG_PASSWORD}@127.0.0.1:5432"
CH="${SLUICE_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123}/"
S3_DIR="${SLUICE_SERVICES_DIR:-$HOME/.cache/sluice-services}/s3/lake"
DB=sluice_bench

step() { printf '\n== %s\n' "$*" >&2; }
calc() { awk "BEGIN { print $1 }"; }
now() { date +%s.%N; }
ch() { curl -fsS "$CH" --data-binary "$1"; }

scripts/services.sh up

if [[ ! -x /usr/bin/time ]]; then
  step "Installing GNU time (Debian package time)"
  apt-get install -y -qq time >/dev/null
fi

if [[ -n ${SLUICE_BIN:-} ]]; then
  SLUICE="$SLUICE_BIN"
else
  step "Building sluice (release)"
  cargo build --release --locked --quiet
  SLUICE="$CARGO_TARGET_DIR/release/sluice"
fi

TAG="$(date +%s)-$$"
WORK="$(mktemp -d -t sluice-bench.XXXXXX)"
S3_PREFIXES=()
CH_DBS=()
cleanup() {
  [[ ${SLUICE_BENCH_KEEP:-0} == 1 ]] && { echo "kept: $WORK, s3 prefixes ${S3_PREFIXES[*]}, databases $DB ${CH_DBS[*]}" >&2; return; }
  psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  for db in "${CH_DBS[@]}"; do ch "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true; done
  # s3s-fs keeps objects as files under the services' state folder.
  for p in "${S3_PREFIXES[@]}"; do rm -rf "${S3_DIR:?}/$p"; done
  rm -rf "$WORK"
}
trap cleanup EXIT

step "Seeding PostgreSQL database $DB: transactions ($ROWS rows), transactions_quarter ($QUARTER rows)"
psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
seed_start=$(now)
psql -q -v ON_ERROR_STOP=1 "$PG/$DB" >/dev/null <<SQL
-- n rows, transaction_time spread evenly over the 30 days before now (ClickHouse's
-- TTL counts from today), in insertion order like an append-mostly OLTP table.
CREATE FUNCTION seed(t regclass, n bigint) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
  EXECUTE format(\$q\$
    INSERT INTO %s
    SELECT g,
           1 + mod(g * 7919, 100000),
           1 + mod(g * 104729, 5000),
           round((random() * 2000)::numeric, 2),
           (ARRAY['SUCCESS', 'SUCCESS', 'SUCCESS', 'FAILED', 'PENDING'])[1 + mod(g, 5)],
           ts,
           ts + (random() * interval '5 minutes')
    FROM generate_series(1::bigint, %s) AS g,
         LATERAL (SELECT now() - interval '30 days' + (g - 0.5) / %s * interval '30 days'
                         - interval '10 minutes' AS ts) AS t
  \$q\$, t, n, n);
END \$\$;
CREATE TABLE transactions (
  id               bigint PRIMARY KEY,
  user_id          bigint NOT NULL,
  merchant_id      bigint NOT NULL,
  amount           numeric(12, 2) NOT NULL,
  status           text NOT NULL,
  transaction_time timestamptz NOT NULL,
  updated_at       timestamptz NOT NULL
);
CREATE TABLE transactions_quarter (LIKE transactions INCLUDING ALL);
SELECT seed('transactions', $ROWS);
SELECT seed('transactions_quarter', $QUARTER);
-- The indexes a real table would have for these two columns.
CREATE INDEX ON transactions (transaction_time);
CREATE INDEX ON transactions (updated_at);
CREATE INDEX ON transactions_quarter (transaction_time);
CREATE INDEX ON transactions_quarter (updated_at);
SQL
# Hint bits and the visibility map are set here, not during the first timed read.
psql -q "$PG/$DB" -c "VACUUM (FREEZE, ANALYZE)"
seed_secs=$(calc "$(now) - $seed_start")
table_bytes=$(psql -tA "$PG/$DB" -c "SELECT pg_size_pretty(pg_table_size('transactions'))")
printf 'seeded %d + %d rows in %.1f s (transactions: %s on disk)\n' "$ROWS" "$QUARTER" "$seed_secs" "$table_bytes" >&2

# config FILE LAKE_URL TABLE [CH_DATABASE]
config() {
  local file=$1 lake=$2 table=$3 chdb=${4:-}
  {
    printf '[lake]\nurl = "%s"\n\n' "$lake"
    printf '[sources.bench]\nkind = "postgres"\nurl = "postgres://sluice:${BENCH_PG_PASSWORD}@127.0.0.1:5432/%s"\n\n' "$DB"
    if [[ -n $chdb ]]; then
      printf '[clickhouse]\nurl = "%s"\ndatabase = "%s"\n\n' "${CH%/}" "$chdb"
    fi
    printf '[[table]]\nname = "transactions"\nsource = "bench"\nsource_table = "public.%s"\n' "$table"
    printf 'cursor = "updated_at"\nkey = ["id"]\npartition_by = "transaction_time"\nretention_days = 90\n'
  } >"$file"
}

RESULTS=()
# measure NAME ROWS_OR_- COMMAND...: runs COMMAND under /usr/bin/time -v; with "-",
# the row count is the "read" column of sluice's summary.
measure() {
  local name=$1 rows=$2
  shift 2
  local out="$WORK/run${#RESULTS[@]}.out" tv="$WORK/run${#RESULTS[@]}.time"
  step "$name: $*"
  /usr/bin/time -v -o "$tv" "$@" >"$out"
  cat "$out" >&2
  if [[ $rows == - ]]; then
    rows=$(awk '$1 == "transactions" { print $2 }' "$out")
  fi
  local secs rss cpu cpusecs
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {
      n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$tv")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$tv")
  cpu=$(awk -F': ' '/Percent of CPU/ { print $2 }' "$tv")
  # CPU seconds (user + system) of the measured process: on a busy machine a
  # steadier number than the wall clock. For psql the work is in the server.
  cpusecs=$(awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.2f", s }' "$tv")
  RESULTS+=("$name|$rows|$secs|$rss|$cpu|$cpusecs")
  printf '%s: %s rows, %s s, %s MiB peak RSS, %s CPU (%s CPU s)\n' "$name" "$rows" "$secs" "$rss" "$cpu" "$cpusecs" >&2
}

step "Scenario a: full load to a local-folder lake"
config "$WORK/a.toml" "$WORK/lake-a" transactions
measure "a full -> folder" - "$SLUICE" --quiet run --config "$WORK/a.toml"
lake_bytes=$(du -sb "$WORK/lake-a" | cut -f1)
lake_files=$(find "$WORK/lake-a" -name '*.parquet' | wc -l)

config "$WORK/a4.toml" "$WORK/lake-a4" transactions_quarter
measure "a/4 full -> folder" - "$SLUICE" --quiet run --config "$WORK/a4.toml"

step "Scenario b: full load to S3 and ClickHouse"
PREFIX="bench-$TAG"
CHDB="sluice_bench_${TAG//-/_}"
S3_PREFIXES+=("$PREFIX")
CH_DBS+=("$CHDB")
ch "DROP DATABASE IF EXISTS $CHDB" >/dev/null
config "$WORK/b.toml" "s3://lake/$PREFIX" transactions "$CHDB"
measure "b full -> S3 -> CH" - "$SLUICE" --quiet run --config "$WORK/b.toml"
echo "ClickHouse rows after b: $(ch "SELECT count() FROM $CHDB.transactions")" >&2

step "Scenario c: update $CHANGED rows and insert $CHANGED rows, then an incremental run"
change_start=$(now)
psql -q -v ON_ERROR_STOP=1 "$PG/$DB" <<SQL
-- 1% of the rows, spread over every day (so every partition is touched), each with
-- its own updated_at as a trigger setting now() in separate transactions would.
UPDATE transactions
SET status = 'REFUNDED', amount = amount + 1, updated_at = clock_timestamp()
WHERE id % 100 = 0;
-- 1% new rows, from the last hour.
INSERT INTO transactions
SELECT $ROWS + g, 1 + (g * 7919) % 100000, 1 + (g * 104729) % 5000,
       round((random() * 2000)::numeric, 2), 'SUCCESS', ts, clock_timestamp()
FROM generate_series(1::bigint, $CHANGED) AS g,
     LATERAL (SELECT now() - interval '1 hour' + g * (interval '59 minutes' / $CHANGED) AS ts) AS t;
SQL
psql -q "$PG/$DB" -c "VACUUM (ANALYZE) transactions"
printf 'changes applied in %.1f s\n' "$(calc "$(now) - $change_start")" >&2
measure "c incremental (2%)" - "$SLUICE" --quiet run --config "$WORK/b.toml"
echo "ClickHouse rows after c: $(ch "SELECT count() FROM $CHDB.transactions")" \
  "(source: $(psql -tA "$PG/$DB" -c "SELECT count(*) FROM transactions"))" >&2

step "Scenario d: rerun with no source changes"
measure "d no-op rerun" - "$SLUICE" --quiet run --config "$WORK/b.toml"

step "Scenario e: the source's limit (binary COPY of the whole table to /dev/null)"
ROWS_NOW=$(psql -tA "$PG/$DB" -c "SELECT count(*) FROM transactions")
measure "e psql \\copy binary" "$ROWS_NOW" \
  psql -q "$PG/$DB" -c "\\copy (SELECT * FROM transactions) TO '/dev/null' WITH (FORMAT binary)"
# For reference: the ordered read sluice asks for (ORDER BY the partition column).
measure "e' \\copy ORDER BY time" "$ROWS_NOW" \
  psql -q "$PG/$DB" -c "\\copy (SELECT * FROM transactions ORDER BY transaction_time) TO '/dev/null' WITH (FORMAT binary)"

step "Results ($ROWS rows; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-24s %10s %9s %12s %14s %6s %7s\n' scenario rows seconds rows/s "peak RSS MiB" CPU "CPU s"
for r in "${RESULTS[@]}"; do
  IFS='|' read -r name rows secs rss cpu cpusecs <<<"$r"
  rate=$(awk -v r="$rows" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", r / s; else print "-" }')
  printf '%-24s %10s %9s %12s %14s %6s %7s\n' "$name" "$rows" "$secs" "$rate" "$rss" "$cpu" "$cpusecs"
done
secs_of() { for r in "${RESULTS[@]}"; do IFS='|' read -r n _ s _ _ _ <<<"$r"; [[ $n == "$1"* ]] && echo "$s"; done; }
rss_of() { for r in "${RESULTS[@]}"; do IFS='|' read -r n _ _ m _ _ <<<"$r"; [[ $n == "$1"* ]] && echo "$m"; done; }
echo
printf 'seed: %.1f s for %d + %d rows\n' "$seed_secs" "$ROWS" "$QUARTER"
printf 'a / e (full load to folder vs binary COPY): %.1fx\n' \
  "$(calc "$(secs_of 'a full') / $(secs_of 'e psql')")"
printf 'peak RSS of a: %s MiB at %d rows, %s MiB at %d rows\n' \
  "$(rss_of 'a full')" "$ROWS" "$(rss_of 'a/4')" "$QUARTER"
printf 'local lake: %d bytes in %d Parquet files (%.1f MiB, %.1f bytes/row)\n' \
  "$lake_bytes" "$lake_files" "$(calc "$lake_bytes / 1048576")" "$(calc "$lake_bytes / $ROWS")"
