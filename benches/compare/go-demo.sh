#!/usr/bin/env bash
# Builds the original Go demo (the seed article's main.go) for a side-by-side run.
# Usage: benches/compare/go-demo.sh OUT_DIR PORT   → OUT_DIR/go-sse-demo listening on 127.0.0.1:PORT
#
# The code is cut from ../shared/seed/go-sse-demo-article.txt as published, with two
# changes only: the address (127.0.0.1:PORT instead of :8080), and its 5-second ticker slowed
# to once an hour so that it does not add events to a closed-loop measurement (loadtest pairs
# the n-th event with the n-th POST).
set -euo pipefail
out=${1:?OUT_DIR}; port=${2:?PORT}
here=$(cd "$(dirname "$0")" && pwd)
article="$here/../../../shared/seed/go-sse-demo-article.txt"
command -v go >/dev/null || { echo "go-demo.sh: needs Go: apt-get install golang-go" >&2; exit 2; }
mkdir -p "$out"
awk '/^package main$/ {on=1} on {print} on && /log.Fatal\(http.ListenAndServe/ {getline; print; exit}' "$article" \
  | sed -e "s/\":8080\"/\"127.0.0.1:$port\"/" -e 's/time.NewTicker(5 \* time.Second)/time.NewTicker(time.Hour)/' \
  > "$out/main.go"
grep -q "ListenAndServe(\"127.0.0.1:$port\"" "$out/main.go" && grep -q 'NewTicker(time.Hour)' "$out/main.go" \
  || { echo "go-demo.sh: the article's code did not match what this script edits" >&2; exit 1; }
cd "$out"
[ -f go.mod ] || go mod init go-sse-demo >/dev/null 2>&1
GOFLAGS=-mod=mod go build -o go-sse-demo . 
echo "$out/go-sse-demo"
