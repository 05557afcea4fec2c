#!/usr/bin/env bash
# End-to-end MongoDB benchmark: a `users` collection → committed Parquet.
#
#   benches/mongo_e2e.sh [DOCS [N]]     DOCS defaults to 150,000, N to 4
#   SLUICE_BIN=/path/to/sluice benches/mongo_e2e.sh   time a prebuilt binary
#
# Seeds a collection `users` of DOCS documents of the issue's shape ({_id: ObjectId,
# _Uid: "UID00000001", firstName, lastName, occupation, state}) in a fresh database
# of the MongoDB at SLUICE_TEST_MONGO_URL (default: SecantusDB from
# scripts/services.sh on 127.0.0.1:27017), then times under /usr/bin/time -v:
#
#   sluice-p1      `sluice run`, snapshot mode, local-folder lake, no ClickHouse,
#                  one cursor (`read_parallelism = 1`)
#   sluice-pN      the same with `read_parallelism = N` (N ranges of _id at once)
#   pymongoarrow   `pymongoarrow.api.find_arrow_all` of the same collection with
#                  the same schema (the Arrow table in memory, nothing written)
#
# and prints documents, seconds, documents/s and peak RSS. SecantusDB serves about
# 78K documents/s to a plain client, so both sides are bound by the server. A
# measurement, not a test. The database and lake folder are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

DOCS="${1:-150000}"
PAR="${2:-4}"
[[ $DOCS =~ ^[0-9]+$ && $DOCS -ge 1 && $PAR =~ ^[0-9]+$ && $PAR -ge 1 ]] ||
  { echo "usage: $0 [DOCS [N]]" >&2; exit 2; }
MONGO="${SLUICE_TEST_MONGO_URL:-mongodb://127.0.0.1:27017}"
DB="sluice_bench_mongo_$$"
URL="$MONGO/$DB?directConnection=true"
WORK="$(mktemp -d)"
export PYTHONWARNINGS=ignore

step() { printf '\n== %s\n' "$*" >&2; }
cleanup() {
  python3 -c "import pymongo, sys; pymongo.MongoClient(sys.argv[1]).drop_database(sys.argv[2])" \
    "$URL" "$DB" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x /usr/bin/time ]] || { step "Installing GNU time"; apt-get install -y -qq time >/dev/null; }
python3 -c "import pymongoarrow" 2>/dev/null || { echo "needs: pip install pymongoarrow" >&2; exit 2; }

if [[ -n ${SLUICE_BIN:-} ]]; then
  SLUICE="$SLUICE_BIN"
else
  step "Building sluice (release)"
  cargo build --release --locked --quiet
  SLUICE="$CARGO_TARGET_DIR/release/sluice"
fi

step "Seeding $DOCS users into $DB"
python3 - "$URL" "$DB" "$DOCS" <<'PY'
import sys, time
import pymongo
url, db, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
first = ["Ada", "Chinedu", "Ngozi", "Tunde", "Amaka", "Emeka", "Folake", "Ifeanyi"]
last = ["Obi", "Okafor", "Adeyemi", "Balogun", "Eze", "Nwosu", "Bello", "Okonkwo"]
jobs = ["Engineer", "Teacher", "Doctor", "Trader", "Farmer", "Accountant"]
states = ["Lagos", "Abuja", "Kano", "Oyo", "Rivers", "Enugu"]
users = pymongo.MongoClient(url)[db]["users"]
t0 = time.perf_counter()
for start in range(0, n, 10_000):
    users.insert_many(
        [
            {"_Uid": f"UID{i + 1:08}", "firstName": first[i % 8], "lastName": last[(i // 8) % 8],
             "occupation": jobs[i % 6], "state": states[(i // 6) % 6]}
            for i in range(start, min(n, start + 10_000))
        ],
        ordered=False,
    )
print(f"seeded {users.count_documents({})} documents in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
PY

# config N: a snapshot of the collection into its own local lake, N cursors.
config() {
  cat >"$WORK/users-$1.toml" <<EOF
[lake]
url = "$WORK/lake-$1"

[sources.app]
kind = "mongodb"
url = "$URL"

[[table]]
name = "users"
source = "app"
collection = "users"
mode = "snapshot"
read_parallelism = $1
EOF
}

cat >"$WORK/find_arrow_all.py" <<'PY'
import sys, warnings
warnings.filterwarnings("ignore")
import pymongo
from bson import ObjectId
from pymongoarrow.api import Schema, find_arrow_all
users = pymongo.MongoClient(sys.argv[1])[sys.argv[2]]["users"]
schema = Schema({"_id": ObjectId, "_Uid": str, "firstName": str, "lastName": str,
                 "occupation": str, "state": str})
table = find_arrow_all(users, {}, schema=schema)
print(table.num_rows)
PY

RESULTS=()
# measure NAME COMMAND...: runs COMMAND under /usr/bin/time -v.
measure() {
  local name=$1
  shift
  local tv="$WORK/$name.time"
  step "$name: $*"
  /usr/bin/time -v -o "$tv" "$@" >"$WORK/$name.out"
  cat "$WORK/$name.out" >&2
  local secs rss cpu
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {
      n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$tv")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$tv")
  cpu=$(awk -F': ' '/(User|System) time \(seconds\)/ { s += $2 } END { printf "%.2f", s }' "$tv")
  RESULTS+=("$name|$secs|$rss|$cpu")
}

# sluice_run N: one timed run with N cursors, checked against the collection.
sluice_run() {
  config "$1"
  measure "sluice-p$1" "$SLUICE" --quiet run --config "$WORK/users-$1.toml"
  local rows
  rows=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['partitions'].popitem()[1]['rows'])" \
    "$WORK/lake-$1/users/_manifest.json")
  [[ $rows == "$DOCS" ]] || { echo "the lake holds $rows rows, expected $DOCS" >&2; exit 1; }
}
sluice_run 1
if [[ $PAR -gt 1 ]]; then sluice_run "$PAR"; fi
measure pymongoarrow python3 "$WORK/find_arrow_all.py" "$URL" "$DB"

printf '\n%-14s %10s %9s %12s %15s %11s\n' "reader" "documents" "seconds" "documents/s" "peak RSS (MiB)" "CPU s (client)"
for r in "${RESULTS[@]}"; do
  IFS='|' read -r name secs rss cpu <<<"$r"
  printf '%-14s %10d %9.2f %12.0f %15s %11s\n' "$name" "$DOCS" "$secs" "$(awk "BEGIN { print $DOCS / $secs }")" "$rss" "$cpu"
done
