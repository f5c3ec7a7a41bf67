#!/usr/bin/env bash
# The one test command (README): installs what the tests need when it is missing, then runs
# every check and every test. Safe to run again; on a prepared machine it installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

# Rust components used by the checks below (present on this machine kind; cheap to confirm).
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  say "installing rustfmt and clippy"
  rustup component add rustfmt clippy
fi

say "format"
cargo fmt --all -- --check

say "lint"
cargo clippy --workspace --all-targets -- -D warnings

say "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

say "build (every binary: the tests run the real server and tools)"
cargo build --workspace --bins

# Debian's redis-server for the cluster-mode tests (tests/util/redis.rs runs it), and for the
# browser test below Debian's chromium (a downloaded browser is not an option) and npm; for
# the README's examples (scripts/readme-check.sh) nginx (its reverse-proxy recipe) and
# openssl: one apt-get update for whatever is missing.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)  # tests/tls.rs: curl --cacert
# HTTP/2 clients no one here wrote (tests/h2_clients.rs, tests/h2spec.rs, tests/upgrade.rs): curl built with
# HTTP/2 (Debian's is, with nghttp2), nghttp and h2load from Debian's nghttp2-client, and a
# python3 that can make a venv for PyPI's h2 (below).
grep -qw HTTP2 <<<"$(curl -V 2>/dev/null || true)" || need+=(curl)  # (no pipe: pipefail and grep -q)
command -v nghttp >/dev/null 2>&1 && command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The deploy kit's checks (tests/deploy.rs, tests/prometheus.rs): promtool and prometheus from
# Debian's prometheus, without its recommends (they bring node-exporter; the tests run their
# own prometheus on a free loopback port with its own storage and never use the package's
# daemon or :9090); systemd-analyze; dpkg-dev (dpkg-shlibdeps, for the package's libc
# dependency). About 12 s when missing.
bare=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || bare+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || bare+=(systemd)
command -v dpkg-shlibdeps >/dev/null 2>&1 || bare+=(dpkg-dev)
if [ "${#need[@]}" -gt 0 ] || [ "${#bare[@]}" -gt 0 ]; then
  say "installing ${need[*]} ${bare[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  if [ "${#need[@]}" -gt 0 ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ "${#bare[@]}" -gt 0 ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${bare[@]}" >/dev/null
  fi
fi
# cargo-deb builds the Debian package (tests/deploy.rs packages the debug build). Pinned:
# packaging a dev-profile build is deprecated in cargo-deb (it warns) and a later version may
# refuse it. `cargo install --locked` took 1 min 28 s on this two-core machine.
if ! cargo deb --version 2>/dev/null | grep -qx 'cargo-deb 3.8.0'; then
  say "installing cargo-deb"
  cargo install --locked --quiet cargo-deb --version 3.8.0
fi

# PyPI's h2 (with its hyperframe and hpack) for the h2spec port and the closed-window test, in a
# venv of its own under target/ (pinned: the cases read its frame classes). Only when missing.
if ! target/py/bin/python -c 'import h2, hyperframe, hpack, sys; sys.exit(h2.__version__ != "4.3.0")' \
    >/dev/null 2>&1; then
  say "installing PyPI's h2 into target/py"
  python3 -m venv target/py
  target/py/bin/pip install -q --disable-pip-version-check h2==4.3.0 hyperframe==6.1.0 hpack==4.2.0
fi

say "unit and integration tests"
cargo test --workspace

say "the README's examples, run from README.md top to bottom (scripts/readme-check.sh)"
bash scripts/readme-check.sh

say "benches build (running them is 'cargo bench'; figures in BENCHMARKS.md)"
# The dev profile: this proves they compile and link, which is all CI needs; the optimised
# build ('cargo bench') took most of CI's time and measures nothing here.
cargo build --workspace --benches --examples --quiet

say "browser test (the page in headless Chromium against the real server)"
# chromium and npm were installed above with redis-server; the test's npm packages here, also
# when node_modules predates a package added to package.json (`npm ls` exits non-zero then).
if ! (cd tests/browser && npm ls --depth=0 >/dev/null 2>&1); then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
node tests/browser/page.test.js
node tests/browser/auth.test.js
node tests/browser/tls.test.js
node tests/browser/h2.test.js
