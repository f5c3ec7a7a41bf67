"""Runs the h2spec port (cases.py) and the hostile patterns (hostile.py) against running nodes.

    target/py/bin/python tests/h2spec/run.py --conformance 127.0.0.1:PORT --hostile 127.0.0.1:PORT2

tests/h2spec.rs starts the nodes and runs this (`cargo test --test h2spec`). Prints one line per
case and the summaries `h2spec port: N cases, N passed` and `hostile: N cases, N passed`; exits 1
when any case failed. `--only TEXT` runs the cases whose name contains TEXT.
"""

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import cases  # noqa: E402
import hostile  # noqa: E402


def run(title, addr, items, only):
    passed = failed = 0
    for name, fn in items:
        if only and only not in name:
            continue
        harness.OPEN.clear()
        try:
            fn(addr)
            passed += 1
            print(f"  ok    {name}", flush=True)
        except harness.Failure as e:
            failed += 1
            print(f"  FAIL  {name}: {e}", flush=True)
        except Exception as e:  # a crash of the client is this case's failure, not the run's
            failed += 1
            last = traceback.extract_tb(e.__traceback__)[-1]
            print(f"  FAIL  {name}: {type(e).__name__}: {e} (at {last.name}:{last.lineno})", flush=True)
        finally:
            for c in harness.OPEN:
                c.close()
    print(f"{title}: {passed + failed} cases, {passed} passed", flush=True)
    return failed


def max_streams(addr, n):
    c = harness.Conn(addr)
    c.handshake((harness.INITIAL_WINDOW_SIZE, 0))
    got = c.server_settings.get(harness.MAX_CONCURRENT_STREAMS)
    if got != n:
        raise harness.Failure(f"SETTINGS_MAX_CONCURRENT_STREAMS {got}, expected {n}")
    for i in range(n):
        c.get(1 + 2 * i, "/stream?topic=limit")
    for i in range(n):
        c.verify_headers(1 + 2 * i)  # the first n are served
    c.get(1 + 2 * n, "/stream?topic=limit")
    f = c.wait(lambda f: f.stream_id == 1 + 2 * n, f"an answer on stream {1 + 2 * n}")
    if not (type(f).__name__ == "RstStreamFrame" and f.error_code == harness.REFUSED_STREAM):
        raise harness.Failure(f"stream {n + 1} got {harness.describe(f)}, expected RST_STREAM REFUSED_STREAM")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--conformance", help="ADDR of a node for the h2spec port")
    p.add_argument("--hostile", help="ADDR of a node for the hostile patterns")
    p.add_argument("--only", default="")
    p.add_argument("--max-streams", nargs=2, metavar=("ADDR", "N"),
                   help="a node started with --h2-max-streams N: it must advertise N and refuse stream N+1")
    a = p.parse_args()
    failed = 0
    if a.max_streams:
        addr, n = a.max_streams[0], int(a.max_streams[1])
        failed += run("--h2-max-streams", addr, [(f"advertises {n} and refuses the next", lambda addr: max_streams(addr, n))], "")
    if a.conformance:
        failed += run("h2spec port", a.conformance, cases.CASES, a.only)
    if a.hostile:
        failed += run("hostile", a.hostile, hostile.CASES, a.only)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
