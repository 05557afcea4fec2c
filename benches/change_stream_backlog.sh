#!/usr/bin/env bash
# Change-stream benchmark: a backlog of EVENTS changes → committed Parquet.
#
#   benches/change_stream_backlog.sh [EVENTS] [debug|release]   defaults: 50000 debug
#
# Seeds a collection `users` of 20,000 documents of the issue's shape in a fresh
# database of the MongoDB at SLUICE_TEST_MONGO_URL (default: SecantusDB from
# scripts/services.sh), runs `sluice run` once in change_stream mode (the initial
# snapshot; local-folder lake, no ClickHouse), then applies EVENTS changes (60%
# updates, 30% inserts, 10% deletes, in bulk writes of 1,000) and times the
# second run under /usr/bin/time -v: events, seconds of the stream read (open to
# caught up, decoding and Parquet writing included), events/s, whole-run seconds
# and peak RSS.
#
# Keep EVENTS well under the server's oplog cap (SecantusDB: 100,000 entries,
# shared by every database on it), or the backlog is lost before it is read. A
# measurement, not a test. The database and lake folder are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

EVENTS="${1:-50000}"
PROFILE="${2:-debug}"
[[ $EVENTS =~ ^[0-9]+$ && $EVENTS -ge 10 ]] || { echo "usage: $0 [EVENTS >= 10] [debug|release]" >&2; exit 2; }
MONGO="${SLUICE_TEST_MONGO_URL:-mongodb://127.0.0.1:27017}"
DB="sluice_bench_cs_$$"
URL="$MONGO/$DB?directConnection=true"
WORK="$(mktemp -d)"
export PYTHONWARNINGS=ignore
cleanup() {
    python3 -c "import pymongo,sys; pymongo.MongoClient(sys.argv[1]).drop_database(sys.argv[2])" "$URL" "$DB" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

scripts/services.sh up >/dev/null
if [[ $PROFILE == release ]]; then
    cargo build --locked --release --quiet
else
    cargo build --locked --quiet
fi
SLUICE="$CARGO_TARGET_DIR/$PROFILE/sluice"

cat >"$WORK/bench.toml" <<EOF
[lake]
url = "$WORK/lake"

[sources.app]
kind = "mongodb"
url = "$URL"

[[table]]
name = "users"
source = "app"
collection = "users"
mode = "change_stream"
EOF

python3 - "$URL" "$DB" seed <<'EOF'
import sys, pymongo
coll = pymongo.MongoClient(sys.argv[1])[sys.argv[2]]["users"]
coll.insert_many([{"_id": i, "_Uid": f"UID{i:08}", "firstName": f"First{i % 997}",
                   "lastName": f"Last{i % 1009}", "occupation": "Engineer", "state": "Lagos"}
                  for i in range(20000)])
EOF
echo "== first run: snapshot of 20,000 documents"
"$SLUICE" run --config "$WORK/bench.toml" --quiet >/dev/null

echo "== applying $EVENTS changes"
python3 - "$URL" "$DB" "$EVENTS" <<'EOF'
import sys, pymongo
from pymongo import InsertOne, UpdateOne, DeleteOne
coll = pymongo.MongoClient(sys.argv[1])[sys.argv[2]]["users"]
n = int(sys.argv[3]); ops = []; next_id = 20000; deleted = 0; changed = 0
def flush(ops):
    global changed
    r = coll.bulk_write(ops, ordered=True)
    changed += r.modified_count + r.inserted_count + r.deleted_count
for k in range(n):
    r = k % 10
    if r < 6:
        ops.append(UpdateOne({"_id": (k * 7919) % 20000}, {"$set": {"state": f"S{k % 37}"}}))
    elif r < 9:
        ops.append(InsertOne({"_id": next_id, "_Uid": f"UID{next_id:08}", "firstName": "New",
                              "lastName": "Doc", "occupation": "Analyst", "state": "Kano"}))
        next_id += 1
    else:
        ops.append(DeleteOne({"_id": 19999 - deleted})); deleted += 1
    if len(ops) == 1000:
        flush(ops); ops = []
if ops:
    flush(ops)
print(f"{changed} documents changed (updates of deleted documents change nothing)")
EOF

echo "== second run: the backlog ($PROFILE build)"
/usr/bin/time -v "$SLUICE" run --config "$WORK/bench.toml" --log-format json \
    >"$WORK/stdout" 2>"$WORK/stderr"
python3 - "$WORK/stderr" <<'EOF'
import sys, json, datetime
opened = read = None; rss = wall = "?"
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        e = json.loads(line); msg = e.get("fields", {}).get("message", "")
        ts = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        if msg == "Change stream opened.": opened = ts
        if msg == "Change stream read.": read = ts; fields = e["fields"]
    elif "Maximum resident set size" in line: rss = int(line.split()[-1]) // 1024
    elif "Elapsed (wall clock)" in line: wall = line.split()[-1]
secs = (read - opened).total_seconds()
events = int(fields["events"])
print(f"events {events}, rows {fields['rows']}, skipped {fields['skipped']}")
print(f"stream read {secs:.2f} s = {events / secs:,.0f} events/s; whole run {wall} (m:ss); peak RSS {rss} MB")
EOF
# The lake's state (sluice query --as-of) equals the collection.
lake=$("$SLUICE" query --config "$WORK/bench.toml" --as-of "$(date -u +%F)" --format csv \
    "SELECT count(*) AS n, sum(length(state)) AS s FROM users" | tail -1)
source=$(python3 - "$URL" "$DB" <<'EOF'
import sys, pymongo
c = pymongo.MongoClient(sys.argv[1])[sys.argv[2]]["users"]
docs = list(c.find({}, {"state": 1}))
print(f"{len(docs)},{sum(len(d['state']) for d in docs)}")
EOF
)
echo "lake state (documents, sum of state lengths): $lake; collection: $source"
[[ $lake == "$source" ]] || { echo "the lake differs from the collection" >&2; exit 1; }
