#!/usr/bin/env bash
# BENCHMARKS.md "Storms", the loadtest's own: N streams opened at once (`loadtest --storm`)
# against a fresh release node per run, on loopback, three runs of each shape, medians printed:
#   plain   new browsers (no Last-Event-ID: nothing to replay);
#   resume  browsers coming back after a deploy: the node has 50 events, every stream sends
#           `Last-Event-ID: 25` (`--last-event-id 25`), so each replays exactly 25.
# Figures: storm_all_served_ms (first connect until every stream had its head and its replay),
# storm_closed (closed before the head), storm_refused, replayed per stream (min..max), and the
# node's RSS per stream once the storm settled (server_bytes_per_conn, sampled at the end of
# the 5 s hold, after the node gave back what the storm needed).
#
#   bash benches/compare/loadtest_storm.sh N [RUNS]        e.g. 1000, 10000 or 19000; RUNS: 3
#
# Bounded: every run is bounded by the loadtest's own connect timeout and hold, and ends its
# node. Up to ~19.8k streams one loadtest worker holds them (the open-files limit); the node
# must be allowed as many (its own limit, `--max-clients`).
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:?usage: bash benches/compare/loadtest_storm.sh N [RUNS]}
runs=${2:-3}
node=target/release/sse-edge
loadtest=target/release/loadtest
cargo build --release --workspace --bins -q  # a no-op when up to date; never a stale binary
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
for shape in plain resume; do
  for run in $(seq "$runs"); do
    port=$(free_port)
    "$node" --listen "127.0.0.1:$port" --tick 0 --log warn & pid=$!
    wait_port "$port"
    extra=()
    if [ "$shape" = resume ]; then
      for i in $(seq 50); do
        curl -sf -X POST --data "event $i" "http://127.0.0.1:$port/broadcast" >/dev/null
      done
      extra=(--last-event-id 25)
    fi
    # --allow-loss: a storm that fails some streams is a result to print, not an error.
    "$loadtest" --url "http://127.0.0.1:$port/stream" --connections "$n" --storm "${extra[@]}" \
      --duration 5 --server-pid "$pid" --no-progress --allow-loss \
      --json "$work/$shape-$run.json" >/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
python3 - "$work" "$n" "$runs" <<'PY'
import json, statistics, sys
work, n, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for shape in ("plain", "resume"):
    rows = [json.load(open(f"{work}/{shape}-{r}.json")) for r in range(1, runs + 1)]
    med = lambda f: statistics.median(f(j) for j in rows)
    rp = [j["storm_replayed_per_stream"] for j in rows]
    each = ", ".join("%.0f" % (j["storm_all_served_ms"] or 0) for j in rows)
    print(
        f"{shape:<6} n={n:<6} runs={runs} "
        f"established={med(lambda j: j['connections_established']):.0f} "
        f"all_served_ms={med(lambda j: j['storm_all_served_ms'] or 0):.0f} "
        f"closed={med(lambda j: j['storm_closed']):.0f} "
        f"refused={med(lambda j: j['storm_refused']):.0f} "
        f"replayed_per_stream={min(r['min'] for r in rp)}..{max(r['max'] for r in rp)} "
        f"rss_per_stream_bytes={med(lambda j: j.get('server_bytes_per_conn') or 0):.0f}"
        f"  (all_served_ms of each run: {each})"
    )
PY
