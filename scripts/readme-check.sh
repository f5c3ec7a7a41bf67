#!/usr/bin/env bash
# Runs README.md's own examples, top to bottom, in one shell, so that the next reader meets
# what the README says. The blocks are extracted from the README at every run, never copied
# here, so they cannot drift. scripts/test.sh runs this; it takes about a minute.
#
#   bash scripts/readme-check.sh [README]        README_CHECK_KEEP=1 keeps the work directory
#
# What it runs
#   Every ```sh block, in order, in one bash (set -e, pipefail): a variable or a process one
#   block leaves behind is there for the next, as in a reader's terminal. A failing command
#   fails the check, naming the README line. Every ```nginx block is served by Debian's nginx
#   (run unprivileged, in the foreground, with its own prefix and temporary files), inside a
#   `server { listen 127.0.0.1:P; }` where P stands for port 80 (what `http://localhost/`
#   names). Other blocks (ini, yaml, wire formats) are listed, not run.
#
# Skipping a block
#   Put `<!-- readme-check: skip (why) -->` on the line before its fence (blank lines may come
#   between). The reason is printed in the summary at the end. Any other HTML comment line
#   that mentions readme-check is an error, so a misspelt marker cannot skip a block silently.
#
# Expected output
#   Comment lines right after a command that look like its output are checked against what
#   the command printed (its first lines, in order):
#     # {"id":"1","topic":"default","clients":1}   JSON: the same keys in the same order, each
#                                                  value of the same type (ids and counts vary)
#     # : connected    # retry: 2718               SSE lines (`: comment`, `retry:`, `id:`,
#                                                  `event:`, `data:`): literal, except that
#                                                  any number matches any number
#     # 403                                        a bare three-digit HTTP status: exactly
#   Any other comment is prose and is left alone.
#
# Declared substitutions (printed again when it runs)
#   - Every port the blocks name (`localhost:8081`, `--listen 0.0.0.0:8080`, `--port 6379`,
#     `redis://127.0.0.1:6379`, `h2c://127.0.0.1:8091`, and `http://localhost/` as port 80,
#     `https://...` without a port as 443) becomes a free loopback port, the same one wherever
#     the README repeats it;
#     0.0.0.0 becomes 127.0.0.1.
#   - `target/release/X` becomes this checkout's target/debug/X (built first);
#     `cargo build --release ...` does nothing; `cargo run --release [-- ARGS]` (the reader's
#     other terminal) starts target/debug/sse-edge in the background, disowned, on 8080's port.
#   - `redis-server ...` gets `--dir WORK --bind 127.0.0.1` (its files go to the work dir).
#   - `--connections N` is at most 200, `--duration N` at most 3 seconds and
#     `--reconnect-after N` at most 1 (so the blip still falls inside the shortened run).
#   - `curl` is a shell function around the real one: a stream (`-N`) ends after
#     $README_CHECK_STREAM_SECS seconds (2; one started in the background, which a reader keeps
#     open meanwhile, after five times that) and that timeout counts as success (a reader stops
#     it with Ctrl-C); every other request ends within 30 s; no progress meter (a reader's
#     terminal shows none); a request whose output the README
#     does not show and that prints no status (`-w`) fails on an HTTP error (--fail-with-body).
#   - After a line that starts a server in the background (sse-edge, redis-server), the shell
#     waits until it answers (sse-edge: /healthz), as a reader would before typing on; after a
#     `kill`, until the processes are gone (their ports free again).
#   - The blocks run in the work directory (a temporary one), so the files they write (keys,
#     reports) stay out of the checkout.
#
# Every process the blocks start shares one process group, which is killed when this script
# exits, however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
readme=${1:-README.md}
[ -f "$readme" ] || { echo "readme-check: no $readme" >&2; exit 2; }
readme=$(cd "$(dirname "$readme")" && pwd)/$(basename "$readme")
stream_secs=${README_CHECK_STREAM_SECS:-2}
limit_secs=${README_CHECK_LIMIT_SECS:-300}  # the whole run; it takes about a minute
started=$SECONDS

missing=()
for tool in curl openssl redis-server perl timeout; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx" ] || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "readme-check: missing ${missing[*]} (scripts/test.sh installs them)" >&2
  exit 2
fi

work=$(mktemp -d /tmp/readme-check.XXXXXX)
group=""
cleanup() {
  local rc=$?
  if [ -n "$group" ]; then
    # The blocks' processes (nodes, Redis, nginx, streams) are all in this group.
    kill -TERM -- "-$group" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "-$group" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$group" 2>/dev/null || true
  fi
  if [ "${README_CHECK_KEEP:-}" = 1 ]; then echo "readme-check: kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "readme-check: building the debug binaries the blocks run"
cargo build --workspace --bins --quiet

# ---------------------------------------------------------------------------------------
# The README's blocks → one shell script (perl-base is on every Debian system).
cat > "$work/readme.pl" <<'PERL'
use strict;
use warnings;

my $mode = shift @ARGV;
if ($mode eq 'expect') { exit expect(@ARGV); }
my ($readme, $portmap, $repo, $work, $summary) = @ARGV;
my %port;      # README port → loopback port (build), or seen (scan)
if ($mode eq 'build') {
    open my $pm, '<', $portmap or die "$portmap: $!";
    while (<$pm>) { my ($from, $to) = split; $port{$from} = $to; }
}

my $max_connections = 200;
my $max_duration = 3;
my $max_reconnect_after = 1;

# Blocks: fence info string, first line number, lines, skip reason.
open my $fh, '<', $readme or die "$readme: $!";
my @readme = <$fh>;
chomp @readme;
my (@blocks, $block, $skip);
for my $i (0 .. $#readme) {
    my $line = $readme[$i];
    if ($block) {
        if ($line =~ /^```\s*$/) { push @blocks, $block; undef $block; }
        else { push @{ $block->{lines} }, $line; }
        next;
    }
    if ($line =~ /^<!--\s*readme-check:\s*skip\s*\((.+)\)\s*-->\s*$/) { $skip = $1; next; }
    die "README line " . ($i + 1) . ": a readme-check marker must read <!-- readme-check: skip (why) -->\n"
        if $line =~ /^\s*<!--.*readme-check:/;
    if ($line =~ /^```\s*(\S*)/) {
        $block = { info => $1, at => $i + 2, lines => [], skip => $skip };
        undef $skip;
        next;
    }
    undef $skip if $line =~ /\S/;
}
die "README: a fence is not closed\n" if $block;

sub port {
    my ($p) = @_;
    if ($mode eq 'scan') { $port{$p} = 1; return $p; }
    die "no port for $p\n" unless $port{$p};
    return $port{$p};
}

sub host { my ($h) = @_; return $h eq '0.0.0.0' ? '127.0.0.1' : $h; }

# Ports and addresses: every port a block names becomes its loopback port.
sub map_ports {
    my ($l) = @_;
    my %default = (http => 80, https => 443, redis => 6379, h2c => 80);
    $l =~ s{\b(https?|redis|h2c)://(localhost|127\.0\.0\.1|0\.0\.0\.0)(?::(\d+))?}
           {"$1://" . host($2) . ':' . port($3 // $default{$1})}ge;
    $l =~ s{(--listen[ =])(?:0\.0\.0\.0|127\.0\.0\.1|localhost):(\d+)}{$1 . '127.0.0.1:' . port($2)}ge;
    $l =~ s{(--port[ =])(\d+)}{$1 . port($2)}ge;
    return $l;
}

sub substitute {
    my ($l) = @_;
    if ($l =~ /^cargo run --release(?:\s+--\s+(.*))?\s*$/) {
        my $args = $1 // '';
        return "readme_run_node 127.0.0.1:" . port(8080) . " $args";
    }
    return 'true  # readme-check: built already (target/debug)' if $l =~ /^cargo build --release\b/;
    $l =~ s{(?<![\w/.-])(?:\./)?target/release/}{$repo/target/debug/}g;
    $l =~ s{(--connections[ =])(\d+)}{$1 . ($2 > $max_connections ? $max_connections : $2)}ge;
    $l =~ s{(--duration[ =])(\d+)}{$1 . ($2 > $max_duration ? $max_duration : $2)}ge;
    $l =~ s{(--reconnect-after[ =])(\d+)}{$1 . ($2 > $max_reconnect_after ? $max_reconnect_after : $2)}ge;
    $l =~ s{^(\s*(?:\w+=\S*\s+)*)redis-server\b}{${1}redis-server --dir $work --bind 127.0.0.1}g;
    return map_ports($l);
}

# A comment line that shows a command's output (see the script's header).
sub expected_line {
    my ($l) = @_;
    return undef unless $l =~ /^\s*#\s?(.*?)\s*$/;
    my $out = $1;
    return $out if $out =~ /^\{.*\}$/ || $out =~ /^:( |$)/ || $out =~ /^(retry|id|event|data):( |$)/
        || $out =~ /^\d{3}$/;
    return undef;
}

# The line starts a server in the background: the port and how to ask it whether it is up.
sub server_start {
    my ($l) = @_;
    return () unless $l =~ /\s&(\s|$)/;
    my $cmd = $l;
    $cmd =~ s/^\s*(?:\w+=\S*\s+)*//;
    if ($cmd =~ m{^\S*/sse-edge\s} && $cmd !~ m{^\S*/sse-edge\s+(token|upgrade|help)\b}) {
        my ($p) = $cmd =~ /--listen[ =]127\.0\.0\.1:(\d+)/;
        die "README: a node started in the background without --listen: $l\n" unless $p;
        return ($p, $cmd =~ /--tls-cert/ ? 'https' : 'http');
    }
    if ($cmd =~ /^redis-server\s/) {
        my ($p) = $cmd =~ /--port[ =](\d+)/;
        return ($p // 6379, 'tcp');
    }
    return ();
}

my @summary;
my $out = '';
my $n = 0;
for my $b (@blocks) {
    my $what = $b->{info} || 'text';
    if ($b->{skip}) { push @summary, "skip\t$b->{at}\t$what\t$b->{skip}"; next; }
    if ($what eq 'nginx') {
        $n++;
        push @summary, "run\t$b->{at}\tnginx\t$n";
        $out .= "\nreadme_block $n $b->{at} nginx\n";
        $out .= "readme_start_nginx " . port(80) . " <<'README_NGINX'\n";
        $out .= map_ports($_) . "\n" for @{ $b->{lines} };
        $out .= "README_NGINX\n";
        next;
    }
    if ($what ne 'sh') { push @summary, "other\t$b->{at}\t$what\t"; next; }
    $n++;
    push @summary, "run\t$b->{at}\tsh\t$n";
    $out .= "\nreadme_block $n $b->{at} sh\n";
    my @lines = @{ $b->{lines} };
    my $i = 0;
    while ($i < @lines) {
        my $at = $b->{at} + $i;
        my $line = $lines[$i];
        if ($line !~ /\S/ || $line =~ /^\s*#/) { $out .= "$line\n"; $i++; next; }
        # One command: its continuation lines, then the output the README shows for it.
        my @cmd = ($line);
        while ($cmd[-1] =~ /\\$/ && $i + 1 < @lines) { $i++; push @cmd, $lines[$i]; }
        $i++;
        my @expected;
        while ($i < @lines && defined(my $e = expected_line($lines[$i]))) { push @expected, $e; $i++; }
        my @run = map { substitute($_) } @cmd;
        # A stream left running in the background is one a reader keeps open meanwhile.
        $run[0] = "README_STREAM_SECS=\$README_BACKGROUND_SECS $run[0]"
            if $run[0] =~ /^curl\s/ && join(' ', @run) =~ /\s&(\s|$)/;
        $out .= "README_AT=$at\n";
        if (@expected) {
            $out .= "README_EXPECTING=1\n{ " . join("\n", @run) . "\n} >\"\$README_OUT\"\nREADME_EXPECTING=\n";
            $out .= "readme_expect $at <<'README_EXPECTED'\n" . join("\n", @expected) . "\nREADME_EXPECTED\n";
        } else {
            $out .= join("\n", @run) . "\n";
        }
        my $last = join(' ', @run);
        if (my ($p, $kind) = server_start($last)) { $out .= "readme_wait_started \$! $p $kind\n"; }
        if ($run[0] =~ /^kill\s+([^#]*?)\s*(?:#.*)?$/) { $out .= "readme_wait_gone $1\n"; }
    }
}

if ($mode eq 'scan') {
    port(80) if grep { ($_->{info} // '') eq 'nginx' && !$_->{skip} } @blocks;
    print "$_\n" for sort { $a <=> $b } keys %port;
    exit 0;
}
print $out;
open my $sf, '>', $summary or die "$summary: $!";
print $sf "$_\n" for @summary;
exit 0;

# expect LINE EXPECTED_FILE ACTUAL_FILE: 0 when the output has the README's shape.
sub expect {
    my ($at, $expected_file, $actual_file) = @_;
    open my $e, '<', $expected_file or die; my @want = <$e>; chomp @want;
    open my $a, '<', $actual_file or die; my @got = <$a>; chomp @got;
    s/\r$// for @got;
    for my $k (0 .. $#want) {
        my ($w, $g) = ($want[$k], $got[$k]);
        my $why;
        if (!defined $g) { $why = 'no such line in the output'; }
        elsif ($w =~ /^\{/) {
            my ($ws, $gs) = (json_shape($w), json_shape($g));
            $why = 'not a flat JSON object' unless defined $gs;
            $why //= "JSON of another shape ($gs, not $ws)" if $gs ne $ws;
        }
        elsif ($w =~ /^\d{3}$/) { $why = 'another status' if $g ne $w; }
        else {
            my $re = join('\d+', map { quotemeta } split(/\d+/, $w, -1));
            $why = 'another line' unless $g =~ /^$re$/;
        }
        if ($why) {
            print STDERR "readme-check: README line $at: output line " . ($k + 1) . ": $why\n"
                . "  README shows: $w\n  it printed:   " . ($g // '(nothing)') . "\n";
            return 1;
        }
    }
    return 0;
}

# "key:type,..." of a one-level JSON object, or undef.
sub json_shape {
    my ($s) = @_;
    return undef unless $s =~ /^\s*\{(.*)\}\s*$/;
    my $body = $1;
    my @shape;
    my $str = qr/"(?:[^"\\]|\\.)*"/;
    while ($body =~ /\G\s*($str)\s*:\s*($str|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null)\s*(?:,|$)/gc) {
        my ($k, $v) = ($1, $2);
        my $type = $v =~ /^"/ ? 'string' : $v =~ /^(?:true|false)$/ ? 'bool' : $v eq 'null' ? 'null' : 'number';
        push @shape, "$k:$type";
    }
    return undef unless (pos($body) // 0) == length($body) && @shape;
    return join(',', @shape);
}
PERL

# A loopback port nobody listens on, in 20000-31999 (below the ephemeral range), not chosen
# before: sets $port (a function run in $(...) could not remember what it chose).
chosen=" "
free_port() {
  for _ in $(seq 500); do
    port=$((20000 + RANDOM % 12000))
    [[ $chosen == *" $port "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then chosen+="$port "; return; fi
  done
  echo "readme-check: no free loopback port" >&2; exit 1
}
perl "$work/readme.pl" scan "$readme" - "$repo" "$work" - > "$work/named-ports"
: > "$work/ports"
while read -r named; do free_port; echo "$named $port" >> "$work/ports"; done < "$work/named-ports"
perl "$work/readme.pl" build "$readme" "$work/ports" "$repo" "$work" "$work/summary" > "$work/blocks.sh"

# ---------------------------------------------------------------------------------------
# What the blocks run inside: the functions the substitutions call, then the blocks.
cat > "$work/readme.sh" <<PRELUDE
set -eE -o pipefail
README_FILE=$(printf %q "$(basename "$readme")")
README_WORK=$(printf %q "$work")
README_REPO=$(printf %q "$repo")
README_NGINX_BIN=$(printf %q "$nginx")
README_STREAM_SECS=$stream_secs
README_BACKGROUND_SECS=$((stream_secs * 5))
PRELUDE
cat >> "$work/readme.sh" <<'PRELUDE'
README_OUT=$README_WORK/output
README_AT=0
README_EXPECTING=
trap 'echo "readme-check: FAILED at $README_FILE line $README_AT (exit $?): $BASH_COMMAND" >&2' ERR

readme_block() { # N LINE KIND
  printf '\n== block %s (%s line %s, %s)\n' "$1" "$README_FILE" "$2" "$3"
  echo "$1" > "$README_WORK/reached"
}

# The reader's curl, bounded: see the script's header.
curl() {
  local stream=0 status=0 a
  for a in "$@"; do
    case $a in
      --no-buffer) stream=1 ;;
      -w|--write-out) status=1 ;;
      --*) ;;
      -*N*) stream=1 ;;
    esac
  done
  local extra=(--no-progress-meter --max-time 30)
  [ "$stream" = 1 ] && extra=(--no-progress-meter --max-time "$README_STREAM_SECS")
  [ -z "$README_EXPECTING" ] && [ "$status" = 0 ] && extra+=(--fail-with-body)
  local rc=0
  command curl "${extra[@]}" "$@" || rc=$?
  [ "$stream" = 1 ] && [ "$rc" = 28 ] && rc=0   # the stream's time was up: a reader's Ctrl-C
  return "$rc"
}

readme_alive() { [ -e "/proc/$1" ] && ! grep -q ') Z ' "/proc/$1/stat" 2>/dev/null; }

readme_wait_started() { # PID PORT http|https|tcp: until it listens (and a node says ok)
  local pid=$1 port=$2 kind=$3 deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    readme_alive "$pid" || { echo "readme-check: the process started here (pid $pid) exited" >&2; return 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "readme-check: nothing listens on $port after 30 s" >&2; return 1; }
    sleep 0.05
  done
  [ "$kind" = tcp ] && return 0
  until [ "$(command curl -sk --max-time 2 "$kind://127.0.0.1:$port/healthz" || true)" = ok ]; do
    readme_alive "$pid" || { echo "readme-check: the node started here (pid $pid) exited" >&2; return 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "readme-check: the node on $port is not healthy after 30 s" >&2; return 1; }
    sleep 0.05
  done
}

readme_wait_gone() { # PID...: until each has exited (and freed its port)
  local pid deadline=$((SECONDS + 30))
  for pid in "$@"; do
    while readme_alive "$pid"; do
      [ "$SECONDS" -lt "$deadline" ] || { echo "readme-check: pid $pid still runs 30 s after kill" >&2; return 1; }
      sleep 0.05
    done
  done
}

readme_run_node() { # ADDR [ARGS]: `cargo run --release`, as if in a terminal of its own
  local addr=$1; shift
  "$README_REPO/target/debug/sse-edge" --listen "$addr" "$@" &
  local pid=$!
  disown
  readme_wait_started "$pid" "${addr##*:}" http
}

readme_expect() { # LINE, the README's lines on stdin: the captured output has their shape
  cat "$README_OUT"; [ -z "$(tail -c1 "$README_OUT")" ] || echo
  cat > "$README_WORK/expected"
  perl "$README_WORK/readme.pl" expect "$1" "$README_WORK/expected" "$README_OUT"
  echo "(output as the README shows it)"
}

readme_start_nginx() { # PORT, the block on stdin: Debian's nginx, unprivileged, in the foreground
  local port=$1 dir=$README_WORK/nginx
  mkdir -p "$dir/tmp"
  {
    echo "pid $dir/nginx.pid;"
    echo "worker_processes 1;"
    echo "events { worker_connections 512; }"
    echo "http {"
    echo "  access_log off;"
    for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $dir/tmp/$t;"; done
    echo "  server {"
    echo "    listen 127.0.0.1:$port;"
    cat
    echo "  }"
    echo "}"
  } > "$dir/nginx.conf"
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chmod 711 "$README_WORK"  # nobody may pass through to its own directory, and no further
    chown -R nobody "$dir"
    as=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
  fi
  "${as[@]}" "$README_NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -e stderr -g 'daemon off;' &
  readme_wait_started $! "$port" tcp
}

cd "$README_WORK"
PRELUDE
cat "$work/blocks.sh" >> "$work/readme.sh"
echo 'printf "\n== every block ran\n"' >> "$work/readme.sh"

echo "readme-check: $readme, blocks run in $work"
echo "readme-check: substitutions: ports (README → here):" $(tr ' ' '>' < "$work/ports" | tr '\n' ' ')
echo "readme-check:   target/release → target/debug; cargo run --release → a background node;"
echo "readme-check:   --connections ≤ 200, --duration ≤ 3, --reconnect-after ≤ 1; curl -N streams end after ${stream_secs}s"

# Its own process group (timeout makes one), so that everything the blocks start can be
# stopped together, whatever they leave running.
rc=0
timeout -k 5 "$limit_secs" bash "$work/readme.sh" < /dev/null &
group=$!
wait "$group" || rc=$?

echo
echo "readme-check: summary of $(basename "$readme") ($((SECONDS - started)) s)"
reached=$(cat "$work/reached" 2>/dev/null || echo 0)
while IFS=$'\t' read -r what at kind why; do
  case $what in
    run) if [ "$why" -lt "$reached" ] || { [ "$why" = "$reached" ] && [ "$rc" = 0 ]; }; then
           echo "  ran      line $at ($kind)"
         elif [ "$why" = "$reached" ]; then echo "  FAILED   line $at ($kind)"
         else echo "  not reached  line $at ($kind)"; fi ;;
    skip) echo "  SKIPPED  line $at ($kind): $why" ;;
    other) echo "  not run  line $at ($kind: not a shell block)" ;;
  esac
done < "$work/summary"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "readme-check: FAIL: the blocks did not finish within ${limit_secs}s" >&2
elif [ "$rc" != 0 ]; then
  echo "readme-check: FAIL (exit $rc): see the line named above" >&2
else
  echo "readme-check: PASS"
fi
exit "$rc"
