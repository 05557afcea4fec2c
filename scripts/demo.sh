#!/usr/bin/env bash
# The README's first command: the e-wallet demo on the local services.
#
# Starts the services (scripts/services.sh up), seeds the `ewallet` PostgreSQL
# database, runs the pipeline, reruns it (nothing changes), applies a day of
# changes, runs again, and prints the two report queries from ClickHouse.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

scripts/services.sh up

# The same defaults as scripts/services.sh; override them to point elsewhere.
export AWS_ENDPOINT="${AWS_ENDPOINT:-http://127.0.0.1:9000}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-sluiceaccess}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-sluicesecret123}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ALLOW_HTTP="${AWS_ALLOW_HTTP:-true}"
export EWALLET_PG_PASSWORD="${EWALLET_PG_PASSWORD:-sluice}"
export CLICKHOUSE_PASSWORD="${CLICKHOUSE_PASSWORD:-}"
export PGOPTIONS="-c client_min_messages=warning"
PG="postgres://sluice:${EWALLET_PG_PASSWORD}@127.0.0.1:5432"
CH="http://127.0.0.1:8123/"

step() { printf '\n== %s\n' "$*"; }

step "Seeding PostgreSQL database ewallet (2,000 users, 200 merchants, 50,000 transactions)"
psql -q "$PG/sluice" -c "DROP DATABASE IF EXISTS ewallet WITH (FORCE)" -c "CREATE DATABASE ewallet"
psql -q -v ON_ERROR_STOP=1 "$PG/ewallet" -f examples/ewallet_seed.sql
curl -fsS "$CH" --data-binary "DROP DATABASE IF EXISTS ewallet" >/dev/null

step "Building sluice"
cargo build --locked --quiet
SLUICE="$CARGO_TARGET_DIR/debug/sluice"
"$SLUICE" --version
# A fresh lake prefix for the demo, so reruns of this script start clean (s3s-fs
# keeps objects as files under the services' state folder).
rm -rf "${SLUICE_SERVICES_DIR:-$HOME/.cache/sluice-services}/s3/lake/ewallet"

step "First run: full load"
"$SLUICE" run --config examples/ewallet.toml

step "Rerun with no source changes: nothing is rewritten"
"$SLUICE" run --config examples/ewallet.toml

step "A day of changes at the source, then the nightly run loads only those"
psql -q -v ON_ERROR_STOP=1 "$PG/ewallet" -f examples/ewallet_changes.sql
"$SLUICE" run --config examples/ewallet.toml

step "State in the lake"
"$SLUICE" state show --config examples/ewallet.toml

step "ClickHouse equals the source"
src=$(psql -tA "$PG/ewallet" -c "SELECT count(*), sum(amount) FROM transactions")
dst=$(curl -fsS "$CH" --data-binary "SELECT count(), sum(amount) FROM ewallet.transactions FORMAT CSV" | tr ',' '|')
echo "PostgreSQL: $src   ClickHouse: $dst"

step "Report: total successful amount per user per day (top 5)"
curl -fsS "$CH" --data-binary "
  SELECT user_id, toDate(transaction_time) AS day, sum(amount) AS total
  FROM ewallet.transactions WHERE status = 'SUCCESS'
  GROUP BY user_id, day ORDER BY total DESC, user_id LIMIT 5 FORMAT PrettyCompact"

step "Report: transactions per merchant (top 5)"
curl -fsS "$CH" --data-binary "
  SELECT m.name, count() AS transactions
  FROM ewallet.transactions AS t INNER JOIN ewallet.merchants AS m ON t.merchant_id = m.merchant_id
  GROUP BY m.name ORDER BY transactions DESC, m.name LIMIT 5 FORMAT PrettyCompact"
