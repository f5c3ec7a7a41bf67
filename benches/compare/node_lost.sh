#!/usr/bin/env bash
# "A node lost under load" of BENCHMARKS.md: three release nodes on one redis-server (loopback),
# STREAMS_PER_NODE streams on each held by the loadtest with --reconnect, publishing at RATE
# events/s to node 1 only (a publish sent to the node being killed has an unknown fate), and
# node 0 SIGKILLed once every stream is held and publishing has run for a while. Its streams
# come back with Last-Event-ID: directly, to the next node of each stream's failover list
# (stream i starts on node i mod 3); through nginx (Debian's, round robin over the three nodes,
# proxy_buffering off, the default failure settings), to whichever node the proxy picks.
#
#   bash benches/compare/node_lost.sh [STREAMS_PER_NODE] [MODES]   (default: 5000 "direct nginx")
#   env: RATE (events/s, 10), DURATION (publishing seconds, 40), KILL_AFTER (events published before the kill, 100),
#        HISTORY (events each node keeps per topic, 2: every resume reaches back before the
#        survivors' history and is replayed from Redis; 1024 is the node's default),
#        RETRY_MS (the nodes' --retry-ms, 2000: the default),
#        MULTI_ACCEPT (nginx's multi_accept, off: its default)
#
# Prints one line per mode: streams, the killed node's streams, reconnects, lost, duplicated,
# lost covered by gap/reset, reconnect_ms p50/p99/max (from a stream's end to the head that
# served it again), XRANGE calls (and their microseconds) Redis ran from the kill to the end,
# and for nginx the statuses it answered, its "no live upstreams" lines and the upstreams it
# marked down, and the kernel's accept-queue overflows (SYNs dropped, machine-wide) from the
# kill to the end. Every process it starts is ended on exit; each run's files stay in WORK (printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
per=${1:-5000}
modes=${2:-"direct nginx"}
rate=${RATE:-10}
duration=${DURATION:-40}
kill_after=${KILL_AFTER:-100}
history=${HISTORY:-2}
retry_ms=${RETRY_MS:-2000}
multi_accept=${MULTI_ACCEPT:-off}
streams=$((3 * per))
cargo build --release --workspace --bins -q  # a no-op when up to date; never a stale binary
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
work=$(mktemp -d "${TMPDIR:-/tmp}/node-lost.XXXXXX")
echo "work: $work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
metric() { # PORT NAME: a metric summed over its labels (shards), 0 when the node does not answer
  curl -s --max-time 5 "http://127.0.0.1:$1/metrics" | awk -v n="$2" '{split($1, a, "{")} a[1]==n{s+=$2} END{print s+0}'
}
xrange() { # PORT: "calls usec" of XRANGE so far
  redis-cli -p "$1" INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_xrange:/{print $3, $5; f=1} END{if(!f) print 0, 0}'
}
wait_for() { # WHAT SECONDS COMMAND...: until COMMAND succeeds
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2; return 1
}
listen_overflows() { nstat -az TcpExtListenOverflows 2>/dev/null | awk '$1=="TcpExtListenOverflows"{print $2; f=1} END{if(!f) print 0}'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a >= b)}'; }
held_all() { local sum=0; for p in "${ports[@]}"; do sum=$((sum + $(metric "$p" sse_edge_clients | cut -d. -f1))); done; [ "$sum" -ge "$streams" ]; }
published() { ge "$(metric "${ports[1]}" sse_edge_events_published_total)" "$kill_after"; }

for mode in $modes; do
  dir=$work/$mode; mkdir -p "$dir"
  rport=$(free_port)
  setsid redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --logfile redis.log --maxmemory-policy noeviction & pids+=($!)
  wait_port "$rport"
  ports=(); node_pids=()
  for i in 0 1 2; do
    p=$(free_port); ports+=("$p")
    setsid target/release/sse-edge --listen "127.0.0.1:$p" --tick 0 --redis "redis://127.0.0.1:$rport" \
      --history "$history" --retry-ms "$retry_ms" --log warn 2>"$dir/node$i.log" & pids+=($!); node_pids+=($!)
  done
  for p in "${ports[@]}"; do wait_port "$p"; done
  if [ "$mode" = nginx ]; then
    nport=$(free_port); mkdir -p "$dir/nginx/tmp"
    # Two workers, each within the 20,000 open files a process may hold here: a stream through
    # the proxy is two connections. The failure settings are nginx's defaults.
    cat > "$dir/nginx/nginx.conf" <<EOF
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log info;
worker_processes 2;
worker_rlimit_nofile 20000;
events { worker_connections 19000; multi_accept $multi_accept; }
http {
  access_log $dir/nginx/access.log;
  client_body_temp_path $dir/nginx/tmp/body; proxy_temp_path $dir/nginx/tmp/proxy;
  fastcgi_temp_path $dir/nginx/tmp/fastcgi; uwsgi_temp_path $dir/nginx/tmp/uwsgi; scgi_temp_path $dir/nginx/tmp/scgi;
  upstream edge {
    server 127.0.0.1:${ports[0]};
    server 127.0.0.1:${ports[1]};
    server 127.0.0.1:${ports[2]};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$nport backlog=65535 reuseport;
    location / {
      proxy_pass http://edge;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
  }
}
EOF
    setsid "$nginx_bin" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log" -g 'daemon off;' & pids+=($!)
    wait_port "$nport"
    urls="http://127.0.0.1:$nport/stream"
  else
    urls="http://127.0.0.1:${ports[0]}/stream,http://127.0.0.1:${ports[1]}/stream,http://127.0.0.1:${ports[2]}/stream"
  fi
  # Three workers of 5,000 streams each (each within 20,000 open files), from three sources.
  target/release/loadtest --url "$urls" --connections "$streams" --procs 3 \
    --source 127.0.0.1,127.0.0.2,127.0.0.3 --reconnect --no-progress \
    --publish-url "http://127.0.0.1:${ports[1]}/broadcast" --rate "$rate" --duration "$duration" \
    --json "$dir/loadtest.json" >"$dir/loadtest.out" 2>&1 & lt=$!
  wait_for "every stream held" 300 held_all
  wait_for "$kill_after events published" 300 published
  killed_held=$(metric "${ports[0]}" sse_edge_clients | cut -d. -f1)
  read -r calls0 usec0 < <(xrange "$rport")
  overflows0=$(listen_overflows)
  kill -9 "${node_pids[0]}"
  wait "${node_pids[0]}" 2>/dev/null || true
  wait "$lt" || echo "($mode: the loadtest exited non-zero; see $dir/loadtest.out)"
  read -r calls1 usec1 < <(xrange "$rport")
  # Machine-wide: other processes' listeners count too.
  extra=" listen_overflows=$(( $(listen_overflows) - overflows0 ))"
  if [ "$mode" = nginx ]; then
    statuses=$(awk -F'"' '{split($3, a, " "); print a[1]}' "$dir/nginx/access.log" | sort | uniq -c | awk '{printf "%s%s×%s", (n++ ? "," : ""), $2, $1}')
    nolive=$(grep -c 'no live upstreams' "$dir/nginx/error.log" || true)
    down=$(grep 'temporarily disabled' "$dir/nginx/error.log" | sed -n 's/.*upstream: "http:\/\/\([0-9.:]*\).*/\1/p' | sort | uniq -c | awk '{printf "%s%s×%s", (n++ ? "," : ""), $2, $1}')
    extra="$extra nginx_statuses=${statuses:-none} no_live_upstreams=$nolive marked_down=${down:-none} (killed: 127.0.0.1:${ports[0]})"
  fi
  python3 - "$dir/loadtest.json" "$mode" "$streams" "$killed_held" "$((calls1 - calls0))" "$((usec1 - usec0))" "$extra" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
mode, streams, killed, calls, usec, extra = sys.argv[2:]
r = j.get("reconnect_ms", {})
print(f"{mode:<6} streams={streams} killed_node_streams={killed} reconnects={j['reconnects']} "
      f"published={j['messages_published']} lost={j['deliveries_lost']} duplicated={j['deliveries_duplicated']} "
      f"lost_covered={j['deliveries_lost_covered']} reconnect_ms_p50={r.get('p50', 0):.0f} "
      f"p99={r.get('p99', 0):.0f} max={r.get('max', 0):.0f} xrange_calls={calls} xrange_usec={usec} "
      f"latency_p99_ms={j['latency_us']['p99'] / 1000:.0f}{extra}")
EOF
  cleanup; pids=()
done
