#!/usr/bin/env bash
# sluice beside the tools users would pick instead, same table, same run: the
# PostgreSQL `savings_transaction` table of `sluice demo generate` (~3M rows at
# scale 1) loaded into Parquet in a local folder.
#
#   benches/compare_alternatives.sh [SCALE]      SCALE defaults to 1.0
#
#   limit    psql \copy (SELECT …) TO '/dev/null' WITH (FORMAT binary): the source's own speed
#   sling    Sling CLI (pip install sling-linux-amd64 ships the binary), one Parquet file
#            (ingestr 1.1.x is a stub that downloads its binary from GitHub at run
#            time, which fails offline; dlt, which ingestr wraps, stands in for it)
#   dlt      dlt sql_table (pyarrow backend) → filesystem destination, Parquet
#   sluice   sluice run (release build), watermark capture, day-partitioned Parquet
#   sluice+1 sluice incremental run after one `sluice demo simulate` call
#
# Each runs under /usr/bin/time -v (seconds, peak RSS, CPU). Prints seconds, rows/s,
# peak RSS and the ratio to sluice and to the limit. A measurement, not a test.
# Creates the PostgreSQL, MariaDB and MongoDB databases `sluice_compare` and a
# temporary folder, removed at the end (SLUICE_BENCH_KEEP=1 keeps them);
# SLUICE_BIN=path/to/sluice skips the build. A tool that is missing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

SCALE="${1:-1.0}"
DB=sluice_compare
export COMPARE_PG_PASSWORD="${COMPARE_PG_PASSWORD:-sluice}"
export PGOPTIONS="-c client_min_messages=warning"
PG="postgres://sluice:${COMPARE_PG_PASSWORD}@127.0.0.1:5432"
MY="mysql://sluice:sluice@127.0.0.1:3306"
MONGO_BASE="${SLUICE_TEST_MONGO_URL:-mongodb://127.0.0.1:27017}"
export SLUICE_DEMO_PG_URL="$PG/$DB"
export SLUICE_DEMO_MYSQL_URL="$MY/$DB"
export SLUICE_DEMO_MONGO_URL="$MONGO_BASE/$DB?directConnection=true"

step() { printf '\n== %s\n' "$*" >&2; }

scripts/services.sh up
[[ -x /usr/bin/time ]] || apt-get install -y -qq time >/dev/null

if [[ -n ${SLUICE_BIN:-} ]]; then
  SLUICE="$SLUICE_BIN"
else
  step "Building sluice (release)"
  cargo build --release --locked --quiet
  SLUICE="$CARGO_TARGET_DIR/release/sluice"
fi

WORK="$(mktemp -d -t sluice-compare.XXXXXX)"
cleanup() {
  [[ ${SLUICE_BENCH_KEEP:-0} == 1 ]] && { echo "kept: $WORK and databases $DB" >&2; return; }
  psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  mysql -usluice -psluice -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  python3 -c "import sys, pymongo; pymongo.MongoClient(sys.argv[1]).drop_database('$DB')" \
    "$MONGO_BASE/?directConnection=true" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

step "Generating the fintech data set at scale $SCALE into databases $DB"
psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
mysql -usluice -psluice -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB"
"$SLUICE" --quiet demo generate --scale "$SCALE" | tee "$WORK/generate.out" >&2
psql -q "$PG/$DB" -c "VACUUM (FREEZE, ANALYZE) savings_transaction"
ROWS=$(psql -tA "$PG/$DB" -c "SELECT count(*) FROM savings_transaction")
printf 'savings_transaction: %s rows, %s on disk\n' "$ROWS" \
  "$(psql -tA "$PG/$DB" -c "SELECT pg_size_pretty(pg_table_size('savings_transaction'))")" >&2

cat >"$WORK/sluice.toml" <<EOF
[lake]
url = "lake-sluice"

[sources.savings]
kind = "postgres"
url = "postgres://sluice:\${COMPARE_PG_PASSWORD}@127.0.0.1:5432/$DB"

[[table]]
name = "savings_transaction"
source = "savings"
source_table = "public.savings_transaction"
cursor = "updated_at"
key = ["transaction_id"]
partition_by = "created_at"
EOF

RESULTS=()
# measure NAME ROWS COMMAND...
measure() {
  local name=$1 rows=$2
  shift 2
  local tv="$WORK/run${#RESULTS[@]}.time"
  step "$name: $*"
  if ! /usr/bin/time -v -o "$tv" "$@" >"$WORK/run${#RESULTS[@]}.out" 2>&1; then
    tail -20 "$WORK/run${#RESULTS[@]}.out" >&2
    echo "$name failed; left out of the table" >&2
    return 0
  fi
  tail -5 "$WORK/run${#RESULTS[@]}.out" >&2
  local secs rss cpusecs
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {
      n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$tv")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$tv")
  cpusecs=$(awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.1f", s }' "$tv")
  RESULTS+=("$name|$rows|$secs|$rss|$cpusecs")
}

measure "limit: psql COPY binary" "$ROWS" \
  psql -q "$PG/$DB" -c "\\copy (SELECT * FROM savings_transaction) TO '/dev/null' WITH (FORMAT binary)"

# The pip wheel ships the binary inside the package and puts nothing on PATH.
SLING="$(command -v sling || python3 -c 'import os, sling_linux_amd64 as s; print(os.path.join(os.path.dirname(s.__file__), "bin", "sling-linux-amd64"))' 2>/dev/null || true)"
if [[ -n $SLING && -x $SLING ]]; then
  export COMPARE_PG="$PG/$DB?sslmode=disable"
  mkdir -p "$WORK/lake-sling"
  # Sling writes Parquet through a DuckDB CLI it downloads (offline here: it fails);
  # SLING_DUCKDB_COMPUTE=false selects its own Go (arrow) Parquet writer.
  measure "sling $("$SLING" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9.]+' | head -1)" "$ROWS" \
    env SLING_DUCKDB_COMPUTE=false "$SLING" run --src-conn COMPARE_PG --src-stream public.savings_transaction \
    --tgt-object "file://$WORK/lake-sling/savings_transaction.parquet" --mode full-refresh
else
  echo "sling not found (pip install sling-linux-amd64); skipped" >&2
fi

if python3 -c "import dlt, sqlalchemy, psycopg2" 2>/dev/null; then
  cat >"$WORK/dlt_load.py" <<'EOF'
import os, sys
import dlt
from dlt.sources.sql_database import sql_table

table = sql_table(credentials=sys.argv[1], table="savings_transaction", backend="pyarrow",
                  chunk_size=100_000)
pipeline = dlt.pipeline(pipeline_name="compare", pipelines_dir=sys.argv[2] + "/state",
                        destination=dlt.destinations.filesystem("file://" + sys.argv[2] + "/lake"),
                        dataset_name="savings")
print(pipeline.run(table, loader_file_format="parquet"))
EOF
  measure "dlt $(python3 -c 'import dlt; print(dlt.__version__)')" "$ROWS" \
    python3 "$WORK/dlt_load.py" "postgresql+psycopg2://sluice:$COMPARE_PG_PASSWORD@127.0.0.1:5432/$DB" "$WORK/dlt"
else
  echo "dlt with sqlalchemy and psycopg2 not installed (pip install 'dlt[parquet,filesystem]' sqlalchemy psycopg2-binary); skipped" >&2
fi

# Loaded once unmeasured (page cache), as Sling was by its --version above.
"$SLUICE" --version >/dev/null
measure "sluice" "$ROWS" "$SLUICE" --quiet run --config "$WORK/sluice.toml"

step "One simulate call, then sluice's incremental run"
"$SLUICE" --quiet demo simulate --scale "$SCALE" | tee "$WORK/simulate.out" >&2
CHANGED=$(awk '$1 == "savings_transaction" { s += $3 } END { print s }' "$WORK/simulate.out")
measure "sluice incremental" "$CHANGED" "$SLUICE" --quiet run --config "$WORK/sluice.toml"

step "Results: savings_transaction, $ROWS rows (scale $SCALE); $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
secs_of() { for r in "${RESULTS[@]}"; do IFS='|' read -r n _ s _ _ <<<"$r"; [[ $n == "$1" ]] && echo "$s"; done; return 0; }
SLUICE_SECS=$(secs_of "sluice")
LIMIT_SECS=$(secs_of "limit: psql COPY binary")
printf '%-26s %10s %9s %11s %9s %7s %10s %10s\n' tool rows seconds rows/s "RSS MiB" "CPU s" "x sluice" "x limit"
for r in "${RESULTS[@]}"; do
  IFS='|' read -r name rows secs rss cpusecs <<<"$r"
  awk -v n="$name" -v r="$rows" -v s="$secs" -v m="$rss" -v c="$cpusecs" -v b="${SLUICE_SECS:-0}" -v l="${LIMIT_SECS:-0}" 'BEGIN {
    rate = s > 0 ? sprintf("%.0f", r / s) : "-"
    xs = (b > 0 && n !~ /incremental/) ? sprintf("%.2f", s / b) : "-"
    xl = (l > 0 && n !~ /incremental/) ? sprintf("%.2f", s / l) : "-"
    printf "%-26s %10s %9s %11s %9s %7s %10s %10s\n", n, r, s, rate, m, c, xs, xl }'
done
