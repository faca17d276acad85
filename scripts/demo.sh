#!/usr/bin/env bash
# `make demo`: the local ClickHouse (chDB behind its HTTP front-end), then the
# whole pipeline in one process (`pulse demo`; arguments pass through, e.g.
# `make demo DEMO_ARGS="--duration 2m --rate 5000"`). Ctrl-C stops it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/stack up clickhouse
echo "building pulse (release)..." >&2
cargo build --release --locked --bin pulse
export PULSE_CLICKHOUSE_URL="${PULSE_CLICKHOUSE_URL:-http://127.0.0.1:${PULSE_CHDB_PORT:-8123}}"
exec target/release/pulse demo "$@"
