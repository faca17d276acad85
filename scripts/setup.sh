#!/usr/bin/env bash
# Installs everything Pulse's demo (and, with --for-tests, its tests) need on a
# fresh machine; idempotent.
#   - Debian packages for the build and browser tests (only if missing)
#   - the Python venv with chDB (ClickHouse engine) and Tansu (Kafka broker), via scripts/stack
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_pkgs=()
command -v curl >/dev/null || need_pkgs+=(curl)
command -v make >/dev/null || need_pkgs+=(make)
command -v gcc >/dev/null || need_pkgs+=(gcc)
# librdkafka is built with TLS/SASL (OpenSSL) and gzip (zlib); zstd is built from source.
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need_pkgs+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need_pkgs+=(zlib1g-dev)
# Headless Chromium drives the API's live page in its browser test (tests only).
if [[ "${1:-}" == "--for-tests" ]]; then
  [[ -x /usr/bin/chromium ]] || need_pkgs+=(chromium)
fi
if ((${#need_pkgs[@]})); then
  echo "setup: installing Debian packages: ${need_pkgs[*]}" >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}"
fi
"$ROOT/scripts/stack" setup
# schemathesis (tests only): tests/contract.rs runs it against both services' /openapi.json.
if [[ "${1:-}" == "--for-tests" ]]; then
  VENV="${PULSE_CACHE:-$HOME/.cache/pulse}/venv"
  "$VENV/bin/python" -c 'import schemathesis' 2>/dev/null || "$VENV/bin/pip" install --quiet 'schemathesis==4.32.5'
fi
