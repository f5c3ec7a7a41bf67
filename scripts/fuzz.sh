#!/usr/bin/env bash
# Fuzzes, for a bounded time shared between them, the request path
# (fuzz/fuzz_targets/request.rs), the new process's side of a hand-over
# (fuzz/fuzz_targets/handover.rs: the decoder of the hand-over's messages and the judge of
# what is taken), HTTP/2's frame layer and connection state machine
# (fuzz/fuzz_targets/h2.rs) and the HPACK decoder (fuzz/fuzz_targets/hpack.rs).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default 300 seconds, all four targets
#
# Installs cargo-fuzz from crates.io when missing. cargo-fuzz needs nightly flags
# (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. New inputs go to
# fuzz/target/corpus-TARGET (git-ignored); the committed seeds in fuzz/corpus/TARGET are
# only read. A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script.
set -euo pipefail

seconds="${1:-300}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(request handover h2 hpack)
fi
each=$((seconds / ${#targets[@]}))
if [ "$each" -lt 1 ]; then
    each=1
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

failed=0
for target in "${targets[@]}"; do
    work="target/corpus-$target"
    mkdir -p "$work"
    log="target/fuzz-$target.log"

    set +e
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$work" "corpus/$target" -- \
        -max_total_time="$each" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e

    echo
    echo "== fuzz summary ($target, ${each}s) =="
    grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^stat::peak_rss_mb' "$log" || true
    grep -E '^#[0-9]+.*DONE' "$log" | tail -n 1 || true
    crashes=$(find "artifacts/$target" -type f 2>/dev/null | wc -l)
    echo "crash artifacts: $crashes (fuzz/artifacts/$target)"
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        echo "fuzzing $target found a failure (exit $status)" >&2
        failed=1
    fi
done
exit "$failed"
