#!/usr/bin/env bash
# Fuzzes the event decoder, the spec parser and the ingest body parser with
# cargo fuzz (libFuzzer), each for a bounded time; the corpus is kept in
# fuzz/corpus/<target>. A crash leaves its input in fuzz/artifacts/<target>:
# turn it into a regression test next to the code it broke.
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PULSE_CACHE:-$HOME/.cache/pulse}"
SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(decode_event parse_spec ingest_body)

if ! command -v cargo-fuzz >/dev/null && [[ ! -x "$CACHE/cargo-fuzz/bin/cargo-fuzz" ]]; then
  echo "fuzz: installing cargo-fuzz into $CACHE/cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --root "$CACHE/cargo-fuzz" >/dev/null
fi
export PATH="$CACHE/cargo-fuzz/bin:$PATH"
# cargo fuzz builds with sanitizer flags that need nightly features; the
# machine's stable toolchain allows them for this build only.
export RUSTC_BOOTSTRAP=1

cd "$ROOT/fuzz"
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s" >&2
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 15
done
