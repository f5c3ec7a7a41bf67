#!/usr/bin/env bash
# Builds the Debian package of sse-edge: the binary, the systemd unit, the settings file
# (/etc/default/sse-edge), the man page and shell completions (generated from the built
# binary's own command-line definition, so they match its --help), the alert rules and the
# dashboard. Configured in Cargo.toml ([package.metadata.deb]); maintainer scripts beside
# this file.
#
#   bash deploy/debian/build.sh            release build -> target/debian/sse-edge_<v>-1_<arch>.deb
#   bash deploy/debian/build.sh --debug [--out DIR]
#                                           the debug build as it is (CI: tests/deploy.rs)
#
# Needs cargo-deb (cargo install --locked cargo-deb) and dpkg-dev's tools (dpkg-shlibdeps
# finds the libc dependency); scripts/test.sh installs both.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=release
out=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=dev ;;
    --out) out=$2; shift ;;
    *) echo "build.sh: unknown argument $1 (--debug, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [ "$profile" = release ]; then
  cargo build --release --locked --bin sse-edge
  exe=$target_dir/release/sse-edge
  build_flags=()
else
  # The debug build is whatever the tests built: packaging it proves the package, and an
  # optimised build would cost CI minutes on two cores.
  exe=$target_dir/debug/sse-edge
  [ -x "$exe" ] || cargo build --locked --bin sse-edge
  build_flags=(--profile dev --fast --no-strip)
fi
assets=target/deb-assets
mkdir -p "$assets" "$out"
"$exe" man | gzip -9n > "$assets/sse-edge.1.gz"
"$exe" completions bash > "$assets/sse-edge.bash"
"$exe" completions zsh > "$assets/_sse-edge"
"$exe" completions fish > "$assets/sse-edge.fish"
cargo deb --no-build --locked -p sse-edge "${build_flags[@]}" --output "$out"
