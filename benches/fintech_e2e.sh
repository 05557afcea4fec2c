#!/usr/bin/env bash
# The issue-7 end-to-end benchmark: the fintech data set of `sluice demo generate`
# (MongoDB users, PostgreSQL savings plans and transactions, MariaDB e-wallet) moved
# source → S3 lake → ClickHouse by a release sluice, a rerun with no change, then
# one `sluice demo simulate` call and the incremental run.
#
#   benches/fintech_e2e.sh [SCALE ...]      SCALE defaults to 1.0 (~3M transactions);
#                                           several scales run one after the other
#                                           (e.g. `0.1 1.0` to see memory at 10x)
#
# Prints, per run and per table: rows written, bytes, seconds per stage (extract,
# merge, commit, ClickHouse), rows/s; per SQL model (sql/fintech, run after the
# tables): rows, rows dropped, seconds; per run: wall seconds and peak RSS of the
# process (/usr/bin/time -v). Checks that every ClickHouse table holds as many rows
# as the lake says. A measurement, not a test: nothing is asserted on time.
#
# Uses its own databases `sluice_bench_fintech` (PostgreSQL, MariaDB, MongoDB), an
# S3 prefix and a ClickHouse database of that name, all dropped at the end
# (SLUICE_BENCH_KEEP=1 keeps them). SLUICE_BIN=path/to/sluice skips the build;
# SLUICE_BENCH_MODELS=0 leaves the SQL models out (tables only).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

SCALES=("${@:-1.0}")
DB=sluice_bench_fintech
export BENCH_PG_PASSWORD="${BENCH_PG_PASSWORD:-sluice}" BENCH_MYSQL_PASSWORD="${BENCH_MYSQL_PASSWORD:-sluice}"
export PGOPTIONS="-c client_min_messages=warning"
PG="postgres://sluice:${BENCH_PG_PASSWORD}@127.0.0.1:5432"
MY="mysql://sluice:${BENCH_MYSQL_PASSWORD}@127.0.0.1:3306"
MONGO_BASE="${SLUICE_TEST_MONGO_URL:-mongodb://127.0.0.1:27017}"
MONGO_BASE="${MONGO_BASE%%\?*}"
MONGO_BASE="${MONGO_BASE%/}"
CH="${SLUICE_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123}"
export SLUICE_DEMO_PG_URL="$PG/$DB"
export SLUICE_DEMO_MYSQL_URL="$MY/$DB"
export SLUICE_DEMO_MONGO_URL="$MONGO_BASE/$DB?directConnection=true"

step() { printf '\n== %s\n' "$*" >&2; }
# CPU seconds used by every process on the machine so far (sluice, and the servers
# it drives: PostgreSQL, MariaDB, SecantusDB, s3s-fs, chDB), from /proc/stat.
busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { print ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat; }

eval "$(scripts/services.sh up | sed -n 's/^  \(AWS_[A-Z_]*=\)/export \1/p' | sed 's/  (bucket.*//')"
[[ -x /usr/bin/time ]] || apt-get install -y -qq time >/dev/null

if [[ -n ${SLUICE_BIN:-} ]]; then
  SLUICE="$SLUICE_BIN"
else
  step "Building sluice (release)"
  cargo build --release --locked --quiet
  SLUICE="$CARGO_TARGET_DIR/release/sluice"
fi

WORK="$(mktemp -d -t sluice-fintech.XXXXXX)"
drop_all() {
  psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  mysql -usluice -p"$BENCH_MYSQL_PASSWORD" -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  python3 -c "import sys, pymongo; pymongo.MongoClient(sys.argv[1]).drop_database('$DB')" \
    "$MONGO_BASE/?directConnection=true" >/dev/null 2>&1 || true
  curl -sf "$CH" --data-binary "DROP DATABASE IF EXISTS $DB" >/dev/null || true
}
PREFIXES=()
# The lake prefixes written, through the S3 API (boto3 when installed).
drop_prefixes() {
  [[ ${#PREFIXES[@]} -gt 0 ]] || return 0
  python3 - "${PREFIXES[@]}" <<'EOF' || echo "S3 prefixes ${PREFIXES[*]} left in bucket lake (no boto3)" >&2
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
for prefix in sys.argv[1:]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket="lake", Delete={"Objects": keys})
EOF
}
cleanup() {
  [[ ${SLUICE_BENCH_KEEP:-0} == 1 ]] && { echo "kept: $WORK, databases $DB, S3 prefixes ${PREFIXES[*]}" >&2; return; }
  drop_all
  drop_prefixes
  rm -rf "$WORK"
}
trap cleanup EXIT

# Per-table rows of one run report (sluice runs show --json), with the process's
# wall time and peak RSS. Arguments: label, run output, /usr/bin/time output, config,
# CPU seconds of the whole machine during the run.
report() {
  local label=$1 out=$2 tv=$3 config=$4 machine=$5 id
  id=$(awk '$1 == "run" { print $2; exit }' "$out")
  # A failed run prints no summary; its id is in the log.
  [[ -n $id ]] || id=$(grep -o 'run_id=[^ ]*' "${out%.out}.err" | head -1 | cut -d= -f2)
  "$SLUICE" --quiet runs show --config "$config" --json "$id" >"$WORK/report.json"
  python3 - "$label" "$WORK/report.json" "$tv" "$machine" <<'EOF'
import json, re, sys
label, path, tv, machine = sys.argv[1:]
run = json.load(open(path))
text = open(tv).read()
wall = re.search(r"Elapsed \(wall clock\) time.*: (.*)", text).group(1)
secs = 0.0
for part in wall.split(":"):
    secs = secs * 60 + float(part)
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
cpu = sum(float(v) for v in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text))
head = f"{'table':<22} {'rows':>10} {'MiB':>8} {'extract':>8} {'merge':>7} {'commit':>7} {'CH':>7} {'total':>7} {'rows/s':>9} {'parts':>6}"
print(f"\n{label}: {secs:.2f} s wall, peak RSS {rss:.0f} MiB, {cpu:.1f} CPU s "
      f"(machine, every process: {float(machine):.1f} CPU s)")
print(head)
rows_all = 0
for t in run["tables"]:
    s = t.get("stages", {})
    rows = t["rows_changed"]
    rows_all += rows
    rate = f"{rows / t['seconds']:.0f}" if t["seconds"] > 0 else "-"
    print(f"{t['table']:<22} {rows:>10} {t['bytes_written'] / 2**20:>8.1f} {s.get('extract', 0):>8.2f} "
          f"{s.get('merge', 0):>7.2f} {s.get('commit', 0):>7.2f} {s.get('warehouse', 0):>7.2f} "
          f"{t['seconds']:>7.2f} {rate:>9} {len(t['partitions_loaded']):>6}")
# The SQL models of sql/fintech, rebuilt after the tables (their time is in the wall).
for m in run.get("models", []):
    s = m.get("stages", {})
    print(f"{'model ' + m['model']:<33} {m['rows']:>10} rows {m['rows_dropped']:>8} dropped "
          f"{m['seconds']:>7.2f} s (build {s.get('build', 0):.2f}, checks {s.get('checks', 0):.2f}, "
          f"commit {s.get('commit', 0):.2f}, CH {s.get('warehouse', 0):.2f})")
print(f"{'all':<22} {rows_all:>10} {'':>8} {'':>8} {'':>7} {'':>7} {'':>7} {secs:>7.2f} {rows_all / secs:>9.0f}")
if run.get("error"):
    print("run failed:", run["error"])
EOF
}

# ClickHouse rows per table against the source's.
check_counts() {
  local table source ch
  for table in savings_plan savings_transaction wallet_users wallet_merchants wallet_transactions users_current; do
    case $table in
      savings_*) source=$(psql -tA "$PG/$DB" -c "SELECT count(*) FROM $table") ;;
      wallet_*) source=$(mysql -N -usluice -p"$BENCH_MYSQL_PASSWORD" -h127.0.0.1 "$DB" \
        -e "SELECT count(*) FROM ${table#wallet_}" 2>/dev/null) ;;
      users_current) source=$(python3 -c "import sys, pymongo
print(pymongo.MongoClient(sys.argv[1])['$DB'].users.count_documents({}))" "$MONGO_BASE/?directConnection=true") ;;
    esac
    # FINAL: the current state keeps the newest version of each key, deletes hidden.
    ch=$(curl -sf "$CH" --data-binary "SELECT count() FROM $DB.$table$([[ $table == *_current ]] && echo ' FINAL')")
    printf '  %-22s source %10s  ClickHouse %10s  %s\n' "$table" "$source" "$ch" \
      "$([[ $source == "$ch" ]] && echo ok || echo MISMATCH)"
  done
}

for SCALE in "${SCALES[@]}"; do
  step "Scale $SCALE: generating the fintech data set into databases $DB"
  drop_all
  psql -q "$PG/sluice" -c "CREATE DATABASE $DB"
  mysql -usluice -p"$BENCH_MYSQL_PASSWORD" -h127.0.0.1 -e "CREATE DATABASE $DB"
  /usr/bin/time -v -o "$WORK/generate.time" "$SLUICE" --quiet demo generate --scale "$SCALE" \
    | tee "$WORK/generate.out" >&2
  awk -F': ' '/Elapsed \(wall clock\)/ { print "generate: " $2 " wall" }' "$WORK/generate.time" >&2
  psql -q "$PG/$DB" -c "VACUUM ANALYZE"

  PREFIX="bench_fintech_$(date +%s)"
  PREFIXES+=("$PREFIX")
  sed -e "s|s3://lake/fintech_sources|s3://lake/$PREFIX|" \
    -e "s|mongodb://127.0.0.1:27017/fintech?|$MONGO_BASE/$DB?|" \
    -e "s|\${SLUICE_DEMO_PG_PASSWORD}@127.0.0.1:5432/sluice|\${BENCH_PG_PASSWORD}@127.0.0.1:5432/$DB|" \
    -e "s|\${SLUICE_DEMO_MYSQL_PASSWORD}@127.0.0.1:3306/sluice|\${BENCH_MYSQL_PASSWORD}@127.0.0.1:3306/$DB|" \
    -e "s|^database = \"fintech\"|database = \"$DB\"|" \
    -e "s|^url = \"http://127.0.0.1:8123\"|url = \"$CH\"|" \
    -e "s|^path = \"../sql/fintech\"|path = \"$PWD/sql/fintech\"|" \
    examples/fintech_sources.toml >"$WORK/fintech.toml"
  grep -q "$DB" "$WORK/fintech.toml"
  # SLUICE_BENCH_MODELS=0: tables only (source -> lake -> ClickHouse), no [models].
  if [[ ${SLUICE_BENCH_MODELS:-1} == 0 ]]; then
    sed -i '/^\[models\]/,$d' "$WORK/fintech.toml"
  fi

  export SLUICE_SNAPSHOT_DATE=2026-01-01
  step "Scale $SCALE: full load"
  "$SLUICE" --version >/dev/null
  # A failed run (e.g. a model) still stores its report: print it, then stop.
  FAILED=0
  before=$(busy)
  /usr/bin/time -v -o "$WORK/full.time" "$SLUICE" run --config "$WORK/fintech.toml" \
    >"$WORK/full.out" 2>"$WORK/full.err" || { tail -5 "$WORK/full.err" >&2; FAILED=1; }
  machine=$(awk -v a="$before" -v b="$(busy)" 'BEGIN { print b - a }')
  report "scale $SCALE, full load" "$WORK/full.out" "$WORK/full.time" "$WORK/fintech.toml" \
    "$machine" | tee -a "$WORK/results.txt"
  [[ $FAILED == 0 ]] || exit 1

  # Nothing changed at the sources: what a run costs to find that out (open
  # every table's lake state, ask each source, commit nothing).
  step "Scale $SCALE: rerun with no change"
  before=$(busy)
  /usr/bin/time -v -o "$WORK/noop.time" "$SLUICE" run --config "$WORK/fintech.toml" \
    >"$WORK/noop.out" 2>"$WORK/noop.err" || { tail -20 "$WORK/noop.err" >&2; exit 1; }
  machine=$(awk -v a="$before" -v b="$(busy)" 'BEGIN { print b - a }')
  report "scale $SCALE, rerun with no change" "$WORK/noop.out" "$WORK/noop.time" \
    "$WORK/fintech.toml" "$machine" | tee -a "$WORK/results.txt"

  step "Scale $SCALE: one simulate call"
  "$SLUICE" --quiet demo simulate --scale "$SCALE" | tee "$WORK/simulate.out" >&2
  export SLUICE_SNAPSHOT_DATE=2026-01-02
  step "Scale $SCALE: incremental run"
  before=$(busy)
  /usr/bin/time -v -o "$WORK/incr.time" "$SLUICE" run --config "$WORK/fintech.toml" \
    >"$WORK/incr.out" 2>"$WORK/incr.err" || { tail -20 "$WORK/incr.err" >&2; exit 1; }
  machine=$(awk -v a="$before" -v b="$(busy)" 'BEGIN { print b - a }')
  report "scale $SCALE, incremental after one simulate" "$WORK/incr.out" "$WORK/incr.time" \
    "$WORK/fintech.toml" "$machine" | tee -a "$WORK/results.txt"
  check_counts | tee -a "$WORK/results.txt"
  unset SLUICE_SNAPSHOT_DATE
done

step "Results ($(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg))"
cat "$WORK/results.txt"
