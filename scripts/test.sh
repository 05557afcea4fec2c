#!/usr/bin/env bash
# The README's test command: starts the real services on loopback, then runs the
# project's checks and every test against them. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

# Build prerequisites (present on the usual images; installed when missing), and
# Chromium, which renders the `sluice runs --html` page in tests/runs_html.rs.
missing=()
for pkg in pkg-config libssl-dev chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

scripts/services.sh up

# The readers of tests/interop.rs. DuckDB's httpfs comes as a wheel of DuckDB's own
# version (DuckDB would download it from its extension server otherwise).
# Delta tables are read by DuckDB's delta extension (a wheel too) and the
# `deltalake` package (pyarrow's and polars' Delta reader).
python3 -c 'import duckdb, duckdb_extension_httpfs, duckdb_extension_delta, deltalake, pyarrow, polars; assert duckdb.__version__ == "1.5.5"' 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "duckdb==1.5.5" "duckdb-extension-httpfs==1.5.5" "duckdb-extension-delta==1.5.5" \
    "deltalake>=1.1" "pyarrow>=15" "polars>=1"

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== ClickHouse front self-test"
python3 tests/support/test_chfront.py
echo "== cargo test"
cargo test --locked
