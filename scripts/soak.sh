#!/usr/bin/env bash
# Soak test: does sse-edge hold steady memory and descriptors under long churn?
#
# Not part of CI or scripts/test.sh (it takes ten minutes and wants a quiet machine): run it
# by hand on merged code before a release, and keep its summary with the release notes.
#
#   bash scripts/soak.sh                      # 600 s of churn
#   SOAK_SECS=60 bash scripts/soak.sh         # a quick check that the harness works
#
# It builds the release binary (once), starts it on a free loopback port with a small history
# and client buffer (--tick 0 --history 256 --client-buffer 16384, plus --history-bytes 16 MiB
# and --topic-idle 60 when the build has those flags), and runs scripts/soak.py (Python 3,
# stdlib only) against it: streams that read and streams that never read are opened and closed
# continuously, some resuming from a recent Last-Event-ID, while events are published at a
# steady rate to a rotating set of topics. Every second it records the server's RSS, open
# descriptors, sse_edge_clients and sse_edge_history_bytes into a CSV. At the end it stops the
# churn, waits until the streams are gone and prints: RSS min/median/max once the history is
# full, the RSS slope over the second half (KiB/min), and descriptors at baseline vs at the end;
# it also draws RSS and descriptors over time into an SVG.
#
# What a good run looks like: a flat RSS once the history is full (a slope of a few hundred
# KiB/min or less, within noise of zero over ten minutes) and descriptors back at baseline.
#
# Environment:
#   SOAK_SECS      churn duration in seconds (default 600)
#   SOAK_OUT       directory for server.log, soak.csv, soak.svg (default target/soak)
#   SOAK_RATE      publishes per second (default 200)
#   SOAK_READERS   streams that read (default 240)
#   SOAK_SILENT    streams that never read (default 60)
#   SOAK_BIN       a server binary to use instead of building target/release/sse-edge
#
# Everything is loopback only, bounded in count and time, and stops by itself (the server is
# stopped with SIGTERM at the end, or killed if the script is interrupted).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${SOAK_SECS:-600}"
out="${SOAK_OUT:-target/soak}"
budget=16777216
mkdir -p "$out"

if [ -n "${SOAK_BIN:-}" ]; then
  bin="$SOAK_BIN"
else
  echo "soak: building the release binary"
  cargo build --release --quiet --bin sse-edge
  bin=target/release/sse-edge
fi

flags=(--listen 127.0.0.1:0 --tick 0 --history 256 --client-buffer 16384 --log info)
help="$("$bin" --help)"
have_budget=0
if grep -q -- '--history-bytes' <<<"$help"; then
  flags+=(--history-bytes "$budget")
  have_budget=1
else
  echo "soak: this build has no --history-bytes; running without a history budget"
fi
if grep -q -- '--topic-idle' <<<"$help"; then
  flags+=(--topic-idle 60)
else
  echo "soak: this build has no --topic-idle; idle topics are kept"
fi

"$bin" "${flags[@]}" 2>"$out/server.log" &
pid=$!
cleanup() { kill -9 "$pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# The server logs its address once it listens; poll for it (10 s at most).
addr=""
for _ in $(seq 1 100); do
  addr="$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$out/server.log" | head -n 1)"
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$out/server.log" >&2; echo "soak: server exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "soak: server did not report its address" >&2; exit 1; }
echo "soak: sse-edge pid $pid on $addr: ${flags[*]}"

status=0
python3 scripts/soak.py --addr "$addr" --pid "$pid" --secs "$secs" --out "$out" \
  --rate "${SOAK_RATE:-200}" --readers "${SOAK_READERS:-240}" --silent "${SOAK_SILENT:-60}" \
  --budget "$((have_budget * budget))" || status=$?

# Stop the server the way an operator would; it drains within --drain-timeout (5 s).
if kill -TERM "$pid" 2>/dev/null; then
  code=0
  wait "$pid" || code=$?
  echo "soak: server exited with status $code after SIGTERM"
  [ "$code" -eq 0 ] || status=1
else
  echo "soak: the server was already gone; its log is $out/server.log"
  status=1
fi
trap - EXIT INT TERM
exit "$status"
