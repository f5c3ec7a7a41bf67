#!/usr/bin/env python3
"""Prints BENCHMARKS.md's tables from a benches/compare/run.sh results folder: the median of
the three runs of each configuration (runs are numbered -1, -2, -3)."""
import datetime, glob, json, os, re, statistics, sys

out = sys.argv[1] if len(sys.argv) > 1 else "target/bench-runs"

def runs(prefix):
    found = []
    for f in sorted(glob.glob(os.path.join(out, prefix + "-[0-9].json"))):
        with open(f) as fh:
            found.append(json.load(fh))
    return found

def med(rs, get):
    vals = [v for v in (get(r) for r in rs) if v is not None]
    return statistics.median(vals) if vals else None

def ms(us):
    return "–" if us is None else f"{us / 1000:.1f} ms"

def fmt(v, spec):
    return "–" if v is None else format(v, spec)

def lost(rs):
    return sum(r["deliveries_lost"] + r["connect_errors"] for r in rs)

print("## sse-edge, stamped publishes at 10/s for 15 s (median of 3)\n")
print("| streams | bytes/idle stream | CPU ns/delivery | latency p50 | p99 | p99.9 | broadcast completion p99 | connect rate | lost |")
print("|---|---|---|---|---|---|---|---|---|")
for n in (1000, 10000, 19000):
    rs = runs(f"edge-{n}")
    if not rs:
        continue
    print(f"| {n:,} | {fmt(med(rs, lambda r: r.get('server_bytes_per_conn')), '.0f')} "
          f"| {fmt(med(rs, lambda r: r.get('server_cpu_ns_per_delivery')), ',.0f')} "
          f"| {ms(med(rs, lambda r: r['latency_us']['p50']))} | {ms(med(rs, lambda r: r['latency_us']['p99']))} "
          f"| {ms(med(rs, lambda r: r['latency_us']['p999']))} "
          f"| {ms(med(rs, lambda r: r['broadcast_completion_us']['p99']))} "
          f"| {fmt(med(rs, lambda r: r['connections_established'] / r['connect_secs']), ',.0f')}/s | {lost(rs)} |")

print("\n## Side by side: closed-loop publishing, 100 messages (median of 3)\n")
print("| streams | server | bytes/idle stream | CPU ns/delivery | vs floor (CPU) | latency p50 | p99 | lost |")
print("|---|---|---|---|---|---|---|---|")
for n in (1000, 10000, 19000):
    floor_cpu = med(runs(f"cmp-floor-{n}"), lambda r: r.get("server_cpu_ns_per_delivery"))
    for server, label in (("edge", "sse-edge"), ("floor", "floor (one write per stream)"), ("go", "Go demo")):
        rs = runs(f"cmp-{server}-{n}")
        if not rs:
            continue
        cpu = med(rs, lambda r: r.get("server_cpu_ns_per_delivery"))
        ratio = "–" if cpu is None or not floor_cpu else f"{cpu / floor_cpu:.2f}×"
        print(f"| {n:,} | {label} | {fmt(med(rs, lambda r: r.get('server_bytes_per_conn')), ',.0f')} "
              f"| {fmt(cpu, ',.0f')} | {ratio} | {ms(med(rs, lambda r: r['latency_us']['p50']))} "
              f"| {ms(med(rs, lambda r: r['latency_us']['p99']))} | {lost(rs)} |")

print("\n## Shards at 10k streams, stamped, 15 s (median of 3)\n")
print("| shards | offered rate | achieved rate | deliveries/s | CPU ns/delivery | latency p50 | p99 | lost |")
print("|---|---|---|---|---|---|---|---|")
for shards in (1, 2):
    for rate in (10, 20):
        rs = runs(f"shards{shards}-{rate}")
        if not rs:
            continue
        achieved = med(rs, lambda r: r["messages_published"] / r["publish_secs"] if r["publish_secs"] else None)
        print(f"| {shards} | {rate}/s | {fmt(achieved, '.1f')}/s | {fmt(med(rs, lambda r: r['deliveries_per_sec']), ',.0f')} "
              f"| {fmt(med(rs, lambda r: r.get('server_cpu_ns_per_delivery')), ',.0f')} "
              f"| {ms(med(rs, lambda r: r['latency_us']['p50']))} | {ms(med(rs, lambda r: r['latency_us']['p99']))} | {lost(rs)} |")

hold = os.path.join(out, "hold50k.json")
if os.path.exists(hold):
    with open(hold) as fh:
        h = json.load(fh)
    print(f"\n## 50k idle streams over 3 processes: {h['connections_established']:,} established, "
          f"{h['connect_errors']} errors, {h.get('server_bytes_per_conn', 0):.0f} B/stream, "
          f"{h['connect_secs']:.1f} s to connect")

def upgrade_facts(n):
    """The `key=value` files run.sh writes from the server logs of each upgrade run."""
    facts = []
    for f in sorted(glob.glob(os.path.join(out, f"upgrade-{n}-[0-9].upgrade"))):
        with open(f) as fh:
            facts.append(dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line))
    return facts

def resumed_ms(n, r):
    """From the start of the hand-over (the old process's `handed` line minus its paused_ms) to
    the new process's last shard taking its streams: a bound on the delivery gap the logs show."""
    stamp = lambda line: datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        with open(os.path.join(out, f"upgrade-{n}-{r}.server.log")) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    handed = [l for l in lines if "upgrade: handed" in l]
    shards = [l for l in lines if "took over connections from the previous process" in l]
    if not handed or not shards:
        return None
    paused = int(re.search(r" paused_ms=(\d+)", handed[0]).group(1))
    start = stamp(handed[0]) - datetime.timedelta(milliseconds=paused)
    return (max(stamp(l) for l in shards) - start).total_seconds() * 1000

def num(facts, key):
    vals = [int(f[key]) for f in facts if f.get(key, "").isdigit()]
    return statistics.median(vals) if vals else None

if glob.glob(os.path.join(out, "upgrade-*.upgrade")):
    print("\n## Upgrading without disconnects: SIGUSR2 8 s into 20 s of publishing "
          "(median of 3; lost, duplicate, disconnects and POSTs refused: totals of the 3)\n")
    print("| streams | publishes | paused_ms (old) | took_ms (new) | until the new shards had them "
          "| latency p99 / p99.9 / max | without upgrade | lost | duplicate | disconnects | POSTs refused "
          "| old exited 0 | new served to the end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    tail = lambda rs: " / ".join(ms(med(rs, lambda r: r["latency_us"][p])) for p in ("p99", "p999", "max"))
    for n in (1000, 10000, 19000):
        rs, still, facts = runs(f"upgrade-{n}"), runs(f"still-{n}"), upgrade_facts(n)
        if not rs:
            continue
        rate = med(rs, lambda r: r["messages_published"] / r["publish_secs"] if r["publish_secs"] else None)
        resumed = [v for v in (resumed_ms(n, r) for r in (1, 2, 3)) if v is not None]
        resumed = statistics.median(resumed) if resumed else None
        posts = sum(sum(r["publish_errors"].values()) for r in rs)
        exits = sum(f.get("old_exit") == "0" for f in facts)
        served = sum(f.get("new_serving_at_end") == "yes" and f.get("new_adopted") == str(n) for f in facts)
        print(f"| {n:,} | {fmt(rate, '.0f')}/s | {fmt(num(facts, 'paused_ms'), '.0f')} ms | {fmt(num(facts, 'took_ms'), '.0f')} ms "
              f"| {fmt(resumed, '.0f')} ms | {tail(rs)} | {tail(still) if still else '–'} "
              f"| {sum(r['deliveries_lost'] for r in rs)} | {sum(r['duplicates'] for r in rs)} "
              f"| {sum(r['disconnects'] + r['connect_errors'] for r in rs)} | {posts} "
              f"| {exits}/{len(facts)} | {served}/{len(facts)} |")

def node_facts(prefix):
    """The `key=value` files run.sh writes beside each tlsstorm run (node CPU, metrics,
    instructions), for runs -1, -2, -3 in order."""
    facts = []
    for f in sorted(glob.glob(os.path.join(out, prefix + "-[0-9].node"))):
        with open(f) as fh:
            facts.append({k: float(v) for k, v in (l.rstrip("\n").split("=", 1) for l in fh if "=" in l) if v})
    return facts

def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def us_per_conn(facts):
    return median_of(f["cpu_ns"] / f["connections"] / 1000 for f in facts if "cpu_ns" in f)

if glob.glob(os.path.join(out, "tlsstorm-*.node")):
    print("\n## TLS storms: N clients at once, one shard, defaults but --max-request-connections 100000 "
          "(median of 3; closed: total of the 3)\n")
    print("| clients | certificate | build | served | closed | header timeouts | time to all served "
          "| node CPU per connection |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (1000, 5000, 10000):
        for alg, label in (("ec", "P-256"), ("rsa", "RSA-2048")):
            for build, tag in (("base", "before"), ("once", "this branch")):
                rs, facts = runs(f"tlsstorm-{build}-{alg}-{n}"), node_facts(f"tlsstorm-{build}-{alg}-{n}")
                if not rs:
                    continue
                print(f"| {n:,} | {label} | {tag} | {fmt(med(rs, lambda r: r['connections_established']), ',.0f')} "
                      f"| {sum(r['connect_errors'] for r in rs)} "
                      f"| {fmt(median_of(f.get('header_timeouts') for f in facts), ',.0f')} "
                      f"| {fmt(med(rs, lambda r: r['connect_secs']), '.2f')} s | {fmt(us_per_conn(facts), ',.0f')} µs |")

    print("\n## 5,000 connections, 8 in flight: node CPU per connection (median of 3)\n")
    print("| connection | resumed | node CPU per connection | time for 5,000 |")
    print("|---|---|---|---|")
    for mode, label in (("plain", "plain HTTP"), ("ec", "TLS, P-256, full handshake"),
                        ("ec-resume", "TLS, P-256, --tls-resume"), ("rsa", "TLS, RSA-2048, full handshake"),
                        ("rsa-resume", "TLS, RSA-2048, --tls-resume")):
        rs, facts = runs(f"tlsstorm-paced-{mode}"), node_facts(f"tlsstorm-paced-{mode}")
        if not rs:
            continue
        print(f"| {label} | {fmt(med(rs, lambda r: r.get('tls_resumed', 0)), ',.0f')} "
              f"| {fmt(us_per_conn(facts), ',.1f')} µs | {fmt(med(rs, lambda r: r['connect_secs']), '.2f')} s |")

    print("\n## Instructions per connection under callgrind: (400 connections − 200) / 200 (median of 3)\n")
    print("| connection | instructions per connection | resumed (of 400) |")
    print("|---|---|---|")
    for mode, label in (("plain", "plain HTTP"), ("ec", "TLS, P-256, full handshake"),
                        ("ec-resume", "TLS, P-256, resumed"), ("rsa", "TLS, RSA-2048, full handshake"),
                        ("rsa-resume", "TLS, RSA-2048, resumed")):
        small, large = node_facts(f"tlsstorm-cg-{mode}-200"), node_facts(f"tlsstorm-cg-{mode}-400")
        if not small or not large:
            continue
        per = median_of((b["instructions"] - a["instructions"]) / 200 for a, b in zip(small, large))
        print(f"| {label} | {fmt(per, ',.0f')} | {fmt(med(runs(f'tlsstorm-cg-{mode}-400'), lambda r: r.get('tls_resumed', 0)), '.0f')} |")

def h2load_rps(name):
    """Requests per second from h2load's 'finished in …, N req/s' line, per run."""
    found = []
    for f in sorted(glob.glob(os.path.join(out, name + "-[0-9].txt"))):
        with open(f) as fh:
            m = re.search(r"finished in [^,]+, ([0-9.]+) req/s", fh.read())
        if m:
            found.append(float(m.group(1)))
    return found

if runs("h2-cpu-h1"):
    print("\n## HTTP/2 beside HTTP/1.1 at 10k streams (median of 3, one sitting)\n")
    print("| shape | connections | CPU ns/delivery | vs HTTP/1.1 | bytes/idle stream | latency p50 | p99 | lost |")
    print("|---|---|---|---|---|---|---|---|")
    base = med(runs("h2-cpu-h1"), lambda r: r.get("server_cpu_ns_per_delivery"))
    for shape, label in (("h1", "HTTP/1.1"), ("h2c-1", "h2c, 1 stream/connection"),
                         ("h2c-10", "h2c, 10 streams/connection"), ("h2c-100", "h2c, 100 streams/connection")):
        rs, idle = runs(f"h2-cpu-{shape}"), runs(f"h2-idle-{shape}")
        if not rs:
            continue
        cpu = med(rs, lambda r: r.get("server_cpu_ns_per_delivery"))
        spread = [r.get("server_cpu_ns_per_delivery") for r in rs]
        ratio = "–" if cpu is None or not base else f"{cpu / base:.2f}×"
        print(f"| {label} | {fmt(med(rs, lambda r: r.get('connections', r['connections_established'])), ',.0f')} "
              f"| {fmt(cpu, ',.0f')} ({', '.join(fmt(v, ',.0f') for v in spread)}) | {ratio} "
              f"| {fmt(med(idle, lambda r: r.get('server_bytes_per_conn')), ',.0f')} "
              f"| {ms(med(rs, lambda r: r['latency_us']['p50']))} | {ms(med(rs, lambda r: r['latency_us']['p99']))} "
              f"| {lost(rs) + lost(idle)} |")
    print("\n| shape | instructions per delivery under callgrind ((I(100) − I(50)) / 50,000) |")
    print("|---|---|")
    for shape in ("h1", "h2c-1", "h2c-100"):
        counts = []
        for m in (50, 100):
            f = os.path.join(out, f"h2-cg-{shape}-{m}.node")
            if os.path.exists(f):
                with open(f) as fh:
                    counts += [float(l.split("=", 1)[1]) for l in fh if l.startswith("instructions=") and l.strip() != "instructions="]
        if len(counts) == 2:
            print(f"| {shape} | {fmt((counts[1] - counts[0]) / 50000, ',.0f')} |")
    print("\n| h2load | requests/s (median of 3; runs) |")
    print("|---|---|")
    for name, label in (("h2load-healthz-h2c", "/healthz over h2c, 100 connections × 10 streams"),
                        ("h2load-healthz-h1", "/healthz over HTTP/1.1 (--h1), 100 connections"),
                        ("h2load-broadcast-h2c", "POST /broadcast over h2c, 10 connections × 10 streams")):
        got = h2load_rps(name)
        if got:
            print(f"| {label} | {statistics.median(got):,.0f} ({', '.join(f'{v:,.0f}' for v in got)}) |")
