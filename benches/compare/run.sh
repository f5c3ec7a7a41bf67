#!/usr/bin/env bash
# The loadtest series behind BENCHMARKS.md. Every run starts a fresh server, measures it with
# loadtest --server-pid, stops it, and keeps the JSON under OUT (default target/bench-runs).
#
#   benches/compare/run.sh [OUT] [SERIES...]      SERIES: edge compare shards hold50k auth tls upgrade
#                                                         memory live200k tlsstorm fanouthist versus
#                                                 (default: edge compare shards hold50k auth tls upgrade)
#
# Servers listen on 127.0.0.1, each on a free port (found by probing, below the ephemeral
# range that the loadtest's own connections use), never on every interface.
#
# edge      sse-edge at 1k/10k/19k streams, stamped publishes at 10/s for 15 s, 3 runs each
# compare   sse-edge, the floor (benches/floor.rs) and the Go demo at 1k/10k/19k streams,
#           closed-loop publishing (the Go demo ignores bodies), 100 messages, 3 runs each
#           (COMPARE_SERVERS="edge floor" leaves the Go demo out, on a machine without Go)
# shards    sse-edge --shards 1 vs 2 at 10k streams, 10/s and 20/s for 15 s, 3 runs each
# hold50k   50k idle streams over 3 sse-edge processes sharing one port (--reuse-port)
# memory    bytes per idle stream after one broadcast: 1k/10k/19k plain, and 10k in cluster
#           mode, with a token, on 3 topics; 3 runs each (needs redis-server)
# live200k  200k live streams over 12 cluster nodes on one port (--reuse-port --redis),
#           at 1 event/s for 60 s on 12 publishing connections, kernel memory sampled every 2 s (needs
#           redis-server; not in the default list: it takes the machine for ~3 min)
# auth      sse-edge at 10k streams without tokens, and with --subscribe-jwt (HS256 secret;
#           Ed25519 public key) and every stream's token in its cookie, 10/s for 15 s, 3 runs each
# tls       sse-edge at 10k streams plain and over TLS (P-256 certificate), 10/s for 15 s, 3 runs
#           each; then 5k TLS streams at 10/s while a storm of 4k new TLS connections (RSA-2048)
#           arrives, with the handshake budget (--tls-handshakes-per-turn 32) and without it
# tlsstorm  TLS reconnect storms (issue 25, item 3), one shard, node on CPU 1 and loadtest on CPU 0
#           (taskset), 3 runs each: 1k/5k/10k TLS clients at once (P-256 and RSA-2048
#           certificates), served or closed, time to all served, node CPU per connection; 5k
#           connections 8 in flight, full handshakes and with --tls-resume (tickets), node CPU per
#           connection; and under callgrind, instructions per connection (200 vs 400 connections)
#           plain, full and resumed, both certificates. TLSSTORM_BASELINE=/path/to/sse-edge runs
#           the at-once storms with that binary too (the code before the fix).
# upgrade   sse-edge at 1k/10k/19k streams, stamped publishes for 20 s (100/s at 1k, 10/s above);
#           8 s into the publishing, SIGUSR2 hands every stream to a new process (the same
#           binary, started from a copy in a temp dir so that argv[0] names it), 3 runs each,
#           each next to a run without the upgrade (`still-N-R`). OUT/upgrade-N-R.upgrade holds
#           what the logs say (paused_ms, took_ms, streams handed and taken), the old process's
#           exit status and whether the new one served until it was stopped. The loadtest
#           measures the old pid: its CPU and final RSS are left out once it exits.
# fanouthist  issue 29: CPU per delivery with the fan-out latency histograms on, beside the
#           build before them (FANOUTHIST_BASELINE=/path/to/sse-edge, a release build of the
#           commit before; required): 10k streams, closed-loop, 100 messages, as `compare`;
#           3 runs of each, interleaved (before, after, before, ...). Not in the default list.
#           OUT/fanouthist-{before,after}-R.json; compare server_cpu_ns_per_delivery (the ratio
#           of the medians, and each side's spread).
# versus    issue 27 (and any change to the hot path): this build against earlier release builds
#           of sse-edge, named in VERSUS="before=/path/to/sse-edge mid=/path/to/other" (required),
#           interleaved in one sitting (before, mid, this, before, ...), 3 runs each: CPU per
#           delivery at 10k streams (closed-loop, 100 messages, as `compare`) and bytes per idle
#           stream at 10k and 19k (one broadcast, as `memory`). OUT/versus-{cpu,idle10000,
#           idle19000}-NAME-R.json, NAME `this` for this build. Then, with valgrind, instructions
#           per delivery under callgrind (OUT/versus-cg-NAME-{50,100}.node). Not in the default list.
# h2        issue 28: HTTP/2 beside HTTP/1.1 in one sitting, 3 runs each, interleaved
#           (h1, h2c-1, h2c-10, h2c-100, h1, ...; h2c-N is h2c:// with N streams per connection):
#           CPU per delivery at 10k streams (closed-loop, 100 messages, as `compare`), bytes per
#           idle stream at 10k (one broadcast, as `memory`), instructions per delivery under
#           callgrind (1,000 streams, 50 and 100 messages, one shard), and h2load (Debian's
#           nghttp2-client) against /healthz over h2c and over HTTP/1.1 (--h1), and against
#           /broadcast over h2c. OUT/h2-{cpu,idle}-SHAPE-R.json, OUT/h2-cg-SHAPE-M.node,
#           OUT/h2load-{healthz-h2c,healthz-h1,broadcast-h2c}-R.txt. Not in the default list.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/bench-runs}; shift || true
series=("$@"); [ ${#series[@]} -gt 0 ] || series=(edge compare shards hold50k auth tls upgrade)
mkdir -p "$out"
cargo build --release --workspace --bins --examples -q
edge=target/release/sse-edge; floor=target/release/examples/floor; lt=target/release/loadtest
free_port() { # a loopback port nobody listens on, in 20000-31999 (below the ephemeral range)
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }
  done
  echo "run.sh: no free loopback port found" >&2; exit 1
}
port=$(free_port)

start() { # start NAME CMD... → sets pid; waits until the port answers
  "${@:2}" >"$out/$1.server.log" 2>&1 & pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return; sleep 0.05; done
  echo "server $1 did not start" >&2; exit 1
}
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; port=$(free_port); }
running() { [ -e /proc/$1 ] && ! grep -q ') Z ' /proc/$1/stat 2>/dev/null; }  # a zombie has exited
gone_within() { # gone_within PID SECS → 0 once PID has exited, 1 if it still runs after SECS
  for _ in $(seq $(($2 * 10))); do running "$1" || return 0; sleep 0.1; done; return 1
}
field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$2"; }  # field NAME LINE → a tracing field's number
metric() { # metric NAME → its value summed over shards (empty when the node does not answer)
  curl -s -m 2 http://127.0.0.1:$port/metrics | awk -v m="$1" '$1 ~ "^"m"({|$)" {s += $2; f = 1} END {if (f) print s}'
}

for s in "${series[@]}"; do case $s in
edge)
  for n in 1000 10000 19000; do for r in 1 2 3; do
    start "edge-$n-$r" $edge --listen 127.0.0.1:$port --tick 0 --log warn
    $lt --url http://127.0.0.1:$port/stream --connections $n --publish-url http://127.0.0.1:$port/broadcast \
        --rate 10 --duration 15 --server-pid $pid --no-progress --json "$out/edge-$n-$r.json" > "$out/edge-$n-$r.txt"
    stop
  done; done ;;
compare)
  for n in 1000 10000 19000; do for r in 1 2 3; do for server in ${COMPARE_SERVERS:-edge floor go}; do
    case $server in
      edge)  start "cmp-$server-$n-$r" $edge --listen 127.0.0.1:$port --tick 0 --log warn ;;
      floor) start "cmp-$server-$n-$r" $floor 127.0.0.1:$port ;;
      go)    benches/compare/go-demo.sh target/go-demo $port >/dev/null
             start "cmp-$server-$n-$r" target/go-demo/go-sse-demo ;;
    esac
    $lt --url http://127.0.0.1:$port/stream --connections $n --publish-url http://127.0.0.1:$port/broadcast \
        --publish-mode closed-loop --messages 100 --duration 120 --server-pid $pid --no-progress \
        --json "$out/cmp-$server-$n-$r.json" > "$out/cmp-$server-$n-$r.txt" || true
    stop
  done; done; done ;;
fanouthist)
  baseline=${FANOUTHIST_BASELINE:?set FANOUTHIST_BASELINE to a release sse-edge built before the histograms}
  for r in 1 2 3; do for side in before after; do
    bin=$edge; [ "$side" = before ] && bin=$baseline
    name="fanouthist-$side-$r"
    start "$name" "$bin" --listen 127.0.0.1:$port --tick 0 --log warn
    $lt --url http://127.0.0.1:$port/stream --connections 10000 --publish-url http://127.0.0.1:$port/broadcast \
        --publish-mode closed-loop --messages 100 --duration 120 --server-pid $pid --no-progress \
        --json "$out/$name.json" > "$out/$name.txt" || true
    stop
  done; done ;;
versus)
  read -r -a named <<<"${VERSUS:?set VERSUS to NAME=/path/to/sse-edge pairs (release builds to compare with this one)}"
  named+=("this=$edge")
  for r in 1 2 3; do for shape in cpu idle10000 idle19000; do for pair in "${named[@]}"; do
    bin=${pair#*=}; name="versus-$shape-${pair%%=*}-$r"
    start "$name" "$bin" --listen 127.0.0.1:$port --tick 0 --log warn
    if [ "$shape" = cpu ]; then
      load=(--connections 10000 --publish-mode closed-loop --messages 100 --duration 120)
    else
      load=(--connections "${shape#idle}" --messages 1 --duration 10)
    fi
    $lt --url http://127.0.0.1:$port/stream --publish-url http://127.0.0.1:$port/broadcast "${load[@]}" \
        --server-pid $pid --no-progress --json "$out/$name.json" > "$out/$name.txt" || true
    stop
  done; done; done
  # Instructions, not seconds: one shard under callgrind, 1,000 streams, 50 and then 100
  # closed-loop messages; per delivery = (I(100) - I(50)) / 50,000, which cancels start-up,
  # the connects and shutdown. Repeatable whatever else the machine does.
  if command -v valgrind >/dev/null; then
    for pair in "${named[@]}"; do for m in 50 100; do
      bin=${pair#*=}; name="versus-cg-${pair%%=*}-$m"
      valgrind --tool=callgrind --callgrind-out-file="$out/$name.cg" "$bin" --listen 127.0.0.1:$port \
          --tick 0 --log warn --shards 1 >"$out/$name.server.log" 2>&1 & pid=$!
      for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
      $lt --url http://127.0.0.1:$port/stream --publish-url http://127.0.0.1:$port/broadcast \
          --connections 1000 --publish-mode closed-loop --messages $m --duration 300 --connect-timeout 120 \
          --procs 1 --no-progress --json "$out/$name.json" > "$out/$name.txt" || true
      stop
      echo "instructions=$(awk '/^summary:/ {print $2}' "$out/$name.cg")" > "$out/$name.node"
      rm -f "$out/$name.cg"
    done; done
  fi ;;
h2)
  url_for() { # url_for SHAPE → the loadtest's --url and, for h2c, its streams per connection
    case $1 in
      h1) echo "--url http://127.0.0.1:$port/stream" ;;
      h2c-*) echo "--url h2c://127.0.0.1:$port/stream --streams-per-connection ${1#h2c-}" ;;
    esac
  }
  for r in 1 2 3; do for kind in cpu idle; do for shape in h1 h2c-1 h2c-10 h2c-100; do
    name="h2-$kind-$shape-$r"
    start "$name" $edge --listen 127.0.0.1:$port --tick 0 --log warn
    if [ "$kind" = cpu ]; then
      load=(--connections 10000 --publish-mode closed-loop --messages 100 --duration 120)
    else
      load=(--connections 10000 --messages 1 --duration 10)
    fi
    # shellcheck disable=SC2046 # url_for's words are meant to split
    $lt $(url_for $shape) --publish-url http://127.0.0.1:$port/broadcast "${load[@]}" \
        --server-pid $pid --no-progress --json "$out/$name.json" > "$out/$name.txt" || true
    stop
  done; done; done
  if command -v valgrind >/dev/null; then
    for shape in h1 h2c-1 h2c-100; do for m in 50 100; do
      name="h2-cg-$shape-$m"
      valgrind --tool=callgrind --callgrind-out-file="$out/$name.cg" $edge --listen 127.0.0.1:$port \
          --tick 0 --log warn --shards 1 >"$out/$name.server.log" 2>&1 & pid=$!
      for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
      # shellcheck disable=SC2046
      $lt $(url_for $shape) --publish-url http://127.0.0.1:$port/broadcast \
          --connections 1000 --publish-mode closed-loop --messages $m --duration 300 --connect-timeout 120 \
          --procs 1 --no-progress --json "$out/$name.json" > "$out/$name.txt" || true
      stop
      echo "instructions=$(awk '/^summary:/ {print $2}' "$out/$name.cg")" > "$out/$name.node"
      rm -f "$out/$name.cg"
    done; done
  fi
  if command -v h2load >/dev/null; then
    printf 'h2load' > "$out/h2load-body"
    for r in 1 2 3; do
      start "h2load-$r" $edge --listen 127.0.0.1:$port --tick 0 --log warn
      h2load -n 200000 -c 100 -m 10 -t 1 http://127.0.0.1:$port/healthz > "$out/h2load-healthz-h2c-$r.txt" 2>&1 || true
      h2load --h1 -n 200000 -c 100 -m 1 -t 1 http://127.0.0.1:$port/healthz > "$out/h2load-healthz-h1-$r.txt" 2>&1 || true
      h2load -n 100000 -c 10 -m 10 -t 1 -d "$out/h2load-body" -H 'content-type: text/plain' \
          http://127.0.0.1:$port/broadcast > "$out/h2load-broadcast-h2c-$r.txt" 2>&1 || true
      stop
    done
  fi ;;
shards)
  for shards in 1 2; do for rate in 10 20; do for r in 1 2 3; do
    name="shards$shards-$rate-$r"
    start "$name" $edge --listen 127.0.0.1:$port --tick 0 --log warn --shards $shards
    $lt --url http://127.0.0.1:$port/stream --connections 10000 --publish-url http://127.0.0.1:$port/broadcast \
        --rate $rate --duration 15 --server-pid $pid --no-progress --json "$out/$name.json" > "$out/$name.txt" || true
    stop
  done; done; done ;;
auth)
  secret=bench-secret-bench-secret-bench-secret
  keydir=$(mktemp -d)
  openssl genpkey -algorithm ed25519 -out "$keydir/ed.key"
  openssl pkey -in "$keydir/ed.key" -pubout -out "$keydir/ed.pem"
  for mode in off hs256 eddsa; do for r in 1 2 3; do
    name="auth-$mode-$r"; flags=(); header=()
    case $mode in
      hs256) flags=(--subscribe-jwt "$secret")
             header=(--header "Cookie: sse_edge_token=$(SSE_EDGE_TOKEN_KEY=$secret $edge token --subscribe '*')") ;;
      eddsa) flags=(--subscribe-jwt "file:$keydir/ed.pem")
             header=(--header "Cookie: sse_edge_token=$(SSE_EDGE_TOKEN_KEY=file:$keydir/ed.key $edge token --subscribe '*')") ;;
    esac
    start "$name" $edge --listen 127.0.0.1:$port --tick 0 --log warn "${flags[@]}"
    $lt --url http://127.0.0.1:$port/stream --connections 10000 --publish-url http://127.0.0.1:$port/broadcast \
        --rate 10 --duration 15 --server-pid $pid --no-progress "${header[@]}" --json "$out/$name.json" > "$out/$name.txt"
    stop
  done; done
  rm -rf "$keydir" ;;
tls)
  certs=$(mktemp -d)
  for alg in ec rsa; do  # a CA and a leaf for localhost/127.0.0.1 (rustls refuses a CA as leaf)
    mkdir -p "$certs/$alg"; d=$certs/$alg
    if [ $alg = rsa ]; then kp=(-newkey rsa:2048); else kp=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1); fi
    openssl req -x509 "${kp[@]}" -nodes -keyout $d/ca.key -out $d/ca.pem -subj /CN=bench-ca -days 2 2>/dev/null
    openssl req "${kp[@]}" -nodes -keyout $d/leaf.key -out $d/leaf.csr -subj /CN=localhost 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > $d/ext
    openssl x509 -req -in $d/leaf.csr -CA $d/ca.pem -CAkey $d/ca.key -CAcreateserial -out $d/leaf.pem -days 2 -extfile $d/ext 2>/dev/null
  done
  for mode in plain tls; do for r in 1 2 3; do
    name="tls-$mode-$r"; flags=(); scheme=http; trust=()
    if [ $mode = tls ]; then flags=(--tls-cert $certs/ec/leaf.pem --tls-key $certs/ec/leaf.key); scheme=https; trust=(--cacert $certs/ec/ca.pem); fi
    start "$name" $edge --listen 127.0.0.1:$port --tick 0 --log warn "${flags[@]}"
    $lt --url $scheme://127.0.0.1:$port/stream --connections 10000 --publish-url $scheme://127.0.0.1:$port/broadcast \
        --rate 10 --duration 15 --server-pid $pid --no-progress "${trust[@]}" --json "$out/$name.json" > "$out/$name.txt"
    stop
  done; done
  for budget in 32 1048576; do for r in 1 2 3; do
    name="tls-storm-$budget-$r"
    start "$name" $edge --listen 127.0.0.1:$port --tick 0 --log warn --tls-handshakes-per-turn $budget \
        --tls-cert $certs/rsa/leaf.pem --tls-key $certs/rsa/leaf.key
    $lt --url https://127.0.0.1:$port/stream --connections 5000 --publish-url https://127.0.0.1:$port/broadcast \
        --rate 10 --duration 20 --server-pid $pid --no-progress --cacert $certs/rsa/ca.pem \
        --json "$out/$name.json" > "$out/$name.txt" &
    base=$!
    sleep 12  # the 5k streams are connected and receiving
    $lt --url https://127.0.0.1:$port/stream --connections 4000 --duration 3 --no-progress --insecure \
        --source 127.0.0.2 --json "$out/$name-storm.json" > "$out/$name-storm.txt" || true
    wait $base || true
    stop
  done; done
  rm -rf "$certs" ;;
tlsstorm)
  certs=$(mktemp -d)
  for alg in ec rsa; do  # one self-signed leaf for localhost/127.0.0.1 each (the loadtest runs --insecure)
    if [ $alg = rsa ]; then kp=(-newkey rsa:2048); else kp=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1); fi
    openssl req -x509 "${kp[@]}" -nodes -keyout $certs/$alg.key -out $certs/$alg.pem -days 2 -subj /CN=localhost \
      -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE 2>/dev/null
  done
  cpu_ns() { cat /proc/$1/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }  # on-CPU ns, all threads
  tls_metric() { curl -sk -m 5 https://127.0.0.1:$port/metrics | awk -v m="$1" '$1 ~ "^"m"({|$)" {s += $2} END {printf "%.0f\n", s}'; }
  node_args() { # node_args ALG → the flags of a one-shard TLS node (plain: none)
    # Every connection is kept whatever the request-phase cap: admission is item 1's; here
    # only the handshakes and their clock are measured.
    echo --listen 127.0.0.1:$port --tick 0 --log warn --shards 1 --max-request-connections 100000
    [ $1 = plain ] || echo --tls-cert $certs/$1.pem --tls-key $certs/$1.key
  }
  storm() { # storm NAME BIN ALG N INFLIGHT [LOADTEST FLAGS...] → OUT/NAME.json and OUT/NAME.node
    local name=$1 bin=$2 alg=$3 n=$4 inflight=$5 scheme=https before after; shift 5
    [ $alg = plain ] && scheme=http
    start "$name" taskset -c 1 $bin $(node_args $alg)
    before=$(cpu_ns $pid)
    taskset -c 0 $lt --url $scheme://127.0.0.1:$port/stream --connections $n --max-in-flight $inflight \
        --connect-timeout 120 --duration 1 --procs 1 --no-progress $([ $alg = plain ] || echo --insecure) "$@" \
        --json "$out/$name.json" > "$out/$name.txt" || true
    after=$(cpu_ns $pid)
    { echo "cpu_ns=$((after - before))"; echo "connections=$n"
      if [ $alg != plain ]; then
        echo "header_timeouts=$(tls_metric sse_edge_header_timeouts_total)"
        echo "tls_handshakes=$(tls_metric sse_edge_tls_handshakes_total)"
      fi; } > "$out/$name.node"
    stop
  }
  for n in 1000 5000 10000; do for alg in ec rsa; do for r in 1 2 3; do
    storm "tlsstorm-once-$alg-$n-$r" $edge $alg $n $n
    if [ -n "${TLSSTORM_BASELINE:-}" ]; then storm "tlsstorm-base-$alg-$n-$r" "$TLSSTORM_BASELINE" $alg $n $n; fi
  done; done; done
  for mode in plain ec rsa ec-resume rsa-resume; do for r in 1 2 3; do
    storm "tlsstorm-paced-$mode-$r" $edge ${mode%-resume} 5000 8 $([ $mode = ${mode%-resume} ] || echo --tls-resume)
  done; done
  # Instructions, not seconds: callgrind counts the node's user-space instructions whatever
  # else the machine does. Per connection = (400 connections − 200 connections) / 200, which
  # cancels start-up (aws-lc's entropy set-up alone is ~420 M) and shutdown.
  for mode in plain ec rsa ec-resume rsa-resume; do for k in 200 400; do for r in 1 2 3; do
    name="tlsstorm-cg-$mode-$k-$r"; alg=${mode%-resume}; scheme=https
    [ $alg = plain ] && scheme=http
    valgrind --tool=callgrind --callgrind-out-file="$out/$name.cg" $edge $(node_args $alg) >"$out/$name.server.log" 2>&1 & pid=$!
    for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    $lt --url $scheme://127.0.0.1:$port/stream --connections $k --max-in-flight 8 --connect-timeout 120 \
        --duration 1 --procs 1 --no-progress $([ $alg = plain ] || echo --insecure) \
        $([ $mode = $alg ] || echo --tls-resume) --json "$out/$name.json" > "$out/$name.txt" || true
    stop
    echo "instructions=$(awk '/^summary:/ {print $2}' "$out/$name.cg")" > "$out/$name.node"
    rm -f "$out/$name.cg"
  done; done; done
  rm -rf "$certs" ;;
hold50k)
  pids=()
  for i in 1 2 3; do
    $edge --listen 127.0.0.1:$port --reuse-port --tick 0 --log warn >"$out/hold50k-$i.server.log" 2>&1 & pids+=($!)
    sleep 0.3
  done
  $lt --url http://127.0.0.1:$port/stream --connections 50000 --duration 10 \
      --server-pid "$(IFS=,; echo "${pids[*]}")" --no-progress --json "$out/hold50k.json" > "$out/hold50k.txt" || true
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; port=$(free_port) ;;
memory)
  # Bytes per idle stream after one broadcast: 1k/10k/19k streams plain (one shard, embedded
  # broker, auth off), and at 10k in cluster mode, with an HS256 token, and on 3 topics each.
  rport=$(free_port)
  redis-server --port $rport --bind 127.0.0.1 --save '' --appendonly no >"$out/memory.redis.log" 2>&1 & redis=$!
  secret=bench-secret-bench-secret-bench-secret
  token=$(SSE_EDGE_TOKEN_KEY=$secret $edge token --subscribe '*')
  for shape in plain-1000 plain-10000 plain-19000 cluster-10000 hs256-10000 topics3-10000; do for r in 1 2 3; do
    n=${shape#*-}; flags=(); extra=(); url=http://127.0.0.1:$port/stream
    case $shape in
      cluster-*) flags=(--redis redis://127.0.0.1:$rport) ;;
      hs256-*) flags=(--subscribe-jwt "$secret"); extra=(--header "Cookie: sse_edge_token=$token") ;;
      topics3-*) url="$url?topic=a&topic=b&topic=default" ;;
    esac
    name="memory-$shape-$r"
    start "$name" $edge --listen 127.0.0.1:$port --tick 0 --log warn "${flags[@]}"
    $lt --url "$url" --connections $n --publish-url http://127.0.0.1:$port/broadcast --messages 1 \
        --duration 10 --server-pid $pid --no-progress "${extra[@]}" --json "$out/$name.json" > "$out/$name.txt" || true
    stop
  done; done
  kill $redis; wait $redis 2>/dev/null || true ;;
live200k)
  # 200,000 live streams: 12 cluster nodes on one port (each under the 20k open-files limit),
  # tied together by Redis; the loadtest spreads the streams over worker processes and source
  # addresses and publishes on 12 connections. Kernel memory is sampled every 2 s.
  command -v redis-server >/dev/null || { echo "live200k needs redis-server" >&2; exit 2; }
  rport=$(free_port)
  redis-server --port $rport --bind 127.0.0.1 --save '' --appendonly no >"$out/live200k.redis.log" 2>&1 & redis=$!
  sleep 0.5
  kernel() { echo "at $(date +%s.%N)"; cat /proc/net/sockstat; grep -E '^(Slab|SUnreclaim|SReclaimable):' /proc/meminfo
             grep -E '^(TCP|tcp_bind_bucket|sock_inode_cache|dentry|filp|eventpoll_epi|eventpoll_pwq|kmalloc-256|kmalloc-512|kmalloc-1k|skbuff_head_cache) ' /proc/slabinfo
             cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null | sed 's/^/conntrack /'; }
  kernel > "$out/live200k.kernel.before"
  pids=()
  for i in $(seq 12); do
    $edge --listen 127.0.0.1:$port --reuse-port --redis redis://127.0.0.1:$rport --tick 0 --log warn \
      >"$out/live200k-$i.server.log" 2>&1 & pids+=($!)
    sleep 0.2
  done
  ( while sleep 2; do kernel; done ) > "$out/live200k.kernel.during" 2>&1 & sampler=$!
  $lt --url http://127.0.0.1:$port/stream --connections 200000 --ramp 4000 \
      --publish-url http://127.0.0.1:$port/broadcast --publishers 12 --rate 1 --duration 60 \
      --server-pid "$(IFS=,; echo "${pids[*]}")" --no-progress --json "$out/live200k.json" > "$out/live200k.txt" || true
  kill $sampler; kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  kill $redis; wait $redis 2>/dev/null || true; port=$(free_port) ;;
upgrade)
  bindir=$(mktemp -d)
  cp $edge "$bindir/sse-edge"  # SIGUSR2 starts whatever is at the path the node was started from
  for n in 1000 10000 19000; do for r in 1 2 3; do for mode in upgrade still; do
    rate=$((n == 1000 ? 100 : 10))  # ~100k-190k deliveries/s: what one shard keeps up with here
    name="$mode-$n-$r"; log=$out/$name.server.log
    start "$name" "$bindir/sse-edge" --listen 127.0.0.1:$port --tick 0 --log info
    old=$pid
    timeout -s INT 150 $lt --url http://127.0.0.1:$port/stream --connections $n \
        --publish-url http://127.0.0.1:$port/broadcast --rate $rate --duration 20 --server-pid $old \
        --no-progress --json "$out/$name.json" > "$out/$name.txt" &
    load=$!
    if [ $mode = still ]; then wait $load || true; stop; continue; fi
    for _ in $(seq 600); do [ "$(metric sse_edge_events_encoded_total)" -gt 0 ] 2>/dev/null && break; sleep 0.1; done
    sleep 8
    kill -USR2 $old
    old_exit=timeout
    if gone_within $old 30; then old_exit=0; wait $old || old_exit=$?; else kill $old; fi
    wait $load || true
    line=$(grep 'upgrade: handed' "$log" || true)
    new=$(field pid "$line")
    took=$(grep 'upgrade: took over' "$log" || true)
    serving=no; adopted=; new_exit=none
    if [ -n "$new" ] && running "$new"; then
      serving=yes; adopted=$(metric sse_edge_streams_adopted_total)
      kill "$new"; new_exit=timeout; gone_within "$new" 15 && new_exit=exited
    fi
    { echo "old_pid=$old"; echo "old_exit=$old_exit"; echo "new_pid=${new:-none}"
      echo "handed=$(field streams "$line")"; echo "paused_ms=$(field paused_ms "$line")"
      echo "taken=$(field streams "$took")"; echo "took_ms=$(field took_ms "$took")"
      echo "shard_streams=$(grep 'took over connections from the previous process' "$log" |
        while read -r l; do field streams "$l"; done | awk '{s += $1} END {print s + 0}')"
      echo "new_serving_at_end=$serving"; echo "new_adopted=$adopted"; echo "new_after_sigterm=$new_exit"
    } > "$out/$name.upgrade"
    port=$(free_port)
  done; done; done
  rm -rf "$bindir" ;;
*) echo "unknown series $s" >&2; exit 2 ;;
esac; done
echo "results in $out; summarize with: python3 benches/compare/summarize.py $out"
