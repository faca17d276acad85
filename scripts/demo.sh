#!/usr/bin/env bash
# `make demo`: starts the local ClickHouse (chDB) and Kafka (Tansu) and tells how to reach them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/stack up
scripts/stack env
echo "stack is up; stop it with: scripts/stack down"
