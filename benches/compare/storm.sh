#!/usr/bin/env bash
# The "Reconnect storms" series of BENCHMARKS.md: a burst of N complete stream requests that
# are all waiting in the node's sockets when it wakes (scripts/storm.py: SIGSTOP, connect and
# write, SIGCONT), against a fresh release node per run, on loopback; and the same plain burst
# against nginx + nchan (Debian's libnginx-mod-nchan) when it is installed.
#
#   bash benches/compare/storm.sh [RUNS] [SIZES]      (default: 3 runs of 1000 10000 19000)
#
# Prints one line per run: server, shape, size, served, shed, closed, ms to all served, RSS per
# stream 1 s after. Bounded: every run has storm.py's deadline and ends its server.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
sizes=${2:-"1000 10000 19000"}
bin=target/release/sse-edge
cargo build --release --bins -q  # a no-op when up to date; never a stale binary
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
line() { # server shape size output
  awk -v s="$1" -v sh="$2" -v n="$3" '
    /^served /{sv=$2} /^shed /{sd=$2} /^closed_unanswered /{cl=$2} /^not_served_by_deadline /{nd=$2}
    /^all_served_ms /{ms=$2} /^rss_per_stream_bytes /{rss=$2} /^streams_short_of_it /{short=$2}
    END{printf "%-8s %-6s n=%-5d served=%-5d shed=%-4d closed=%-4d late=%-4d short=%-4s all_served_ms=%-6s rss_per_stream=%s\n",
        s, sh, n, sv, sd, cl, nd, (short==""?"-":short), ms, rss}' <<<"$4"
}
for n in $sizes; do
  for shape in plain resume; do
    for _ in $(seq "$runs"); do
      port=$(free_port)
      "$bin" --listen "127.0.0.1:$port" --tick 0 --log warn & pid=$!
      wait_port "$port"
      extra=(); [ "$shape" = resume ] && extra=(--publish 50 --last-event-id 25)
      out=$(python3 scripts/storm.py --pid "$pid" --port "$port" --connections "$n" "${extra[@]}" || true)
      line sse-edge "$shape" "$n" "$out"
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done
nchan=/usr/lib/nginx/modules/ngx_nchan_module.so
if [ -f "$nchan" ] && command -v nginx >/dev/null; then
  for n in $sizes; do
    for _ in $(seq "$runs"); do
      port=$(free_port); dir=$(mktemp -d)
      mkdir -p "$dir/logs"
      cat >"$dir/nginx.conf" <<CONF
load_module $nchan;
worker_processes 1;
worker_rlimit_nofile 20000;
error_log $dir/logs/error.log warn;
pid $dir/nginx.pid;
daemon off;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  server {
    listen 127.0.0.1:$port backlog=65535;
    location = /sub { nchan_subscriber eventsource; nchan_channel_id storm; }
  }
}
CONF
      nginx -p "$dir" -c "$dir/nginx.conf" & master=$!
      wait_port "$port"
      worker=$(pgrep -P "$master" | head -1)
      out=$(python3 scripts/storm.py --pid "$worker" --port "$port" --connections "$n" --path /sub --served-at-head || true)
      line nchan plain "$n" "$out"
      kill "$master"; wait "$master" 2>/dev/null || true
      rm -rf "$dir"
    done
  done
fi
