#!/usr/bin/env bash
# Fuzzes the request path (fuzz/fuzz_targets/request.rs) for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]     default 300
#
# Installs cargo-fuzz from crates.io when missing. cargo-fuzz needs nightly flags
# (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. New inputs go to
# fuzz/target/corpus-request (git-ignored); the committed seeds in fuzz/corpus/request are
# only read. A crash leaves its input in fuzz/artifacts/request/ and fails the script.
set -euo pipefail

seconds="${1:-300}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

work="target/corpus-request"
mkdir -p "$work"
log="target/fuzz-request.log"

set +e
RUSTC_BOOTSTRAP=1 cargo fuzz run request "$work" corpus/request -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

echo
echo "== fuzz summary (request, ${seconds}s) =="
grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^stat::peak_rss_mb' "$log" || true
grep -E '^#[0-9]+.*DONE' "$log" | tail -n 1 || true
crashes=$(find artifacts/request -type f 2>/dev/null | wc -l)
echo "crash artifacts: $crashes (fuzz/artifacts/request)"
if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    echo "fuzzing found a failure (exit $status)" >&2
    exit 1
fi
