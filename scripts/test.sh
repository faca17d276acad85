#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, starts
# the local stack (chDB ClickHouse + Tansu Kafka), runs every test, stops the stack.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Tests get their own ports so that a running demo does not disturb them.
export PULSE_CHDB_PORT="${PULSE_TEST_CHDB_PORT:-18123}"
export PULSE_TANSU_PORT="${PULSE_TEST_TANSU_PORT:-19092}"
export PULSE_STACK_DIR="${PULSE_TEST_STACK_DIR:-$ROOT/.stack/test}"
export PULSE_CLICKHOUSE_URL="http://127.0.0.1:$PULSE_CHDB_PORT"
export PULSE_KAFKA_BROKERS="127.0.0.1:$PULSE_TANSU_PORT"
export PULSE_TEST_STACK=1
export PULSE_CHDB_PYTHON="${PULSE_CACHE:-$HOME/.cache/pulse}/venv/bin/python"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/setup.sh --for-tests

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
rm -rf "$PULSE_STACK_DIR"
trap 'scripts/stack down' EXIT
scripts/stack up

echo "== ClickHouse front-end self-test"
scripts/stack python scripts/test_chdb_server.py

# The OpenAPI contract test (tests/contract.rs) runs schemathesis from here; set, it must exist.
export PULSE_SCHEMATHESIS="${PULSE_CACHE:-$HOME/.cache/pulse}/venv/bin/schemathesis"
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads "${PULSE_TEST_THREADS:-4}"

echo "== Python SDK against real services"
PULSE_BIN="$ROOT/target/debug/pulse" scripts/stack python -m pytest -q sdk/python/tests
echo "== all tests passed"
