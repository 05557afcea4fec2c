#!/usr/bin/env bash
# `sluice query` (DataFusion over the manifest's files) against DuckDB on the same
# Parquet files, same run: a full-scan aggregate and a one-day filtered query over
# the e-wallet transactions table.
#
#   benches/query_vs_duckdb.sh [TRANSACTIONS] [REPEATS]     defaults: 3000000 3
#
# 1. seeds PostgreSQL database `sluice_bench_query` with examples/ewallet_seed.sql,
#    scaled to TRANSACTIONS rows over the same 29 days (as scripts/bench_models.sh);
# 2. `sluice run --table transactions` (release build) into a local-folder lake;
# 3. each query REPEATS times with `sluice query` (a new process each time: the
#    session, manifest read and planning are included) and with DuckDB (Python,
#    the manifest's file list, hive_partitioning = false; a new connection each
#    time, process start excluded), printing the best and median wall times.
#
# A measurement, not a test. The database and lake are removed at the end unless
# SLUICE_BENCH_KEEP=1. Needs python3 with duckdb (scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

ROWS="${1:-3000000}"
REPEATS="${2:-3}"
[[ $ROWS =~ ^[0-9]+$ && $ROWS -ge 1000 ]] || { echo "usage: $0 [ROWS >= 1000] [REPEATS]" >&2; exit 2; }
export PGOPTIONS="-c client_min_messages=warning" EWALLET_PG_PASSWORD="${EWALLET_PG_PASSWORD:-sluice}"
PG="postgres://sluice:${EWALLET_PG_PASSWORD}@127.0.0.1:5432"
DB=sluice_bench_query
WORK="$(mktemp -d)"
cleanup() {
    if [[ ${SLUICE_BENCH_KEEP:-} != 1 ]]; then
        psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
        rm -rf "$WORK"
    else
        echo "kept: database $DB, lake $WORK/lake"
    fi
}
trap cleanup EXIT

scripts/services.sh up >/dev/null
# SLUICE_BIN=/path/to/sluice times a prebuilt binary and skips the build.
if [[ -n ${SLUICE_BIN:-} ]]; then
    SLUICE="$SLUICE_BIN"
else
    cargo build --locked --release --quiet
    SLUICE="$CARGO_TARGET_DIR/release/sluice"
fi

STEP=$(awk -v n="$ROWS" 'BEGIN { printf "%.6f", 50000 * 50 / n }')
echo "== seeding $ROWS transactions (one every $STEP s)"
psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
sed -e "s/generate_series(1::bigint, 50000)/generate_series(1::bigint, $ROWS)/" \
    -e "s/interval '50 seconds'/interval '$STEP seconds'/" examples/ewallet_seed.sql |
    psql -q -v ON_ERROR_STOP=1 "$PG/$DB"

sed -e "s|url = \"s3://lake/ewallet\"|url = \"$WORK/lake\"|" \
    -e "s|5432/ewallet\"|5432/$DB\"|" \
    -e '/^\[clickhouse\]/,/^$/d' -e '/^\[models/,$d' examples/ewallet.toml >"$WORK/bench.toml"

echo "== sluice run --table transactions [release]"
/usr/bin/time -f "sluice run: %e s, peak RSS %M KB" \
    "$SLUICE" run -q --config "$WORK/bench.toml" --table transactions
TABLE="$WORK/lake/transactions"
DAY=$(python3 -c "import json,sys; p=sorted(json.load(open(sys.argv[1]))['partitions']); print(p[len(p)//2])" "$TABLE/_manifest.json")
FILES=$(find "$TABLE" -name '*.parquet' | wc -l)
BYTES=$(du -sb "$TABLE" | cut -f1)
echo "lake: $FILES files, $BYTES bytes; one-day query on $DAY"

FULL_SQL="SELECT status, count(*) AS n, sum(amount) AS total, avg(amount) AS mean FROM transactions GROUP BY status ORDER BY status"
DAY_SQL_SLUICE="SELECT count(*) AS n, sum(amount) AS total FROM transactions WHERE transaction_time_day = DATE '$DAY'"
# DuckDB has no day column: the same day through the file list (files of that
# folder only, which is what sluice's pruning does too).
DAY_SQL_DUCK="SELECT count(*) AS n, sum(amount) AS total FROM transactions"

stats() { sort -n | awk '{ a[NR] = $1 } END { printf "best %.3f s, median %.3f s", a[1], a[int((NR + 1) / 2)] }'; }

time_sluice() {
    local sql="$1" i start end
    for ((i = 0; i < REPEATS; i++)); do
        start=$(date +%s.%N)
        "$SLUICE" query -q --config "$WORK/bench.toml" --format csv "$sql" >"$WORK/sluice.out"
        end=$(date +%s.%N)
        awk -v s="$start" -v e="$end" 'BEGIN { print e - s }'
    done | stats
}

time_duckdb() {
    python3 - "$TABLE" "$REPEATS" "$1" "$2" <<'EOF'
import json, statistics, sys, time
import duckdb
table, repeats, sql, day = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
manifest = json.load(open(f"{table}/_manifest.json"))
files = [f"{table}/{f['path']}" for d, p in manifest["partitions"].items()
         if day in ("", d) for f in p["files"]]
times = []
for _ in range(repeats):
    start = time.perf_counter()
    con = duckdb.connect()
    # Views cannot take prepared parameters: the file list goes in as a literal.
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE VIEW transactions AS SELECT * FROM read_parquet([{listed}], hive_partitioning = false)")
    rows = con.execute(sql).fetchall()
    times.append(time.perf_counter() - start)
    con.close()
print(f"best {min(times):.3f} s, median {statistics.median(times):.3f} s; rows: {rows}")
EOF
}

echo "== full-scan aggregate: $FULL_SQL"
echo "sluice query: $(time_sluice "$FULL_SQL")"
head -5 "$WORK/sluice.out"
echo "DuckDB $(python3 -c 'import duckdb; print(duckdb.__version__)'): $(time_duckdb "$FULL_SQL" "")"
echo "== one day ($DAY): $DAY_SQL_SLUICE"
echo "sluice query: $(time_sluice "$DAY_SQL_SLUICE")"
cat "$WORK/sluice.out"
echo "DuckDB: $(time_duckdb "$DAY_SQL_DUCK" "$DAY")"
