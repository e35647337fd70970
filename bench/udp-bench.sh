#!/usr/bin/env bash
# New UDP sessions: a burst of datagrams from many distinct client sockets (what a DNS or game forwarder sees
# when clients arrive at once) through listen.udp -> connect.udp, next to nginx's stream proxy, both in front of
# the same echo server on loopback. Each round sends one datagram from each of BURST fresh client sockets as
# fast as Python can, then waits until 2 s pass without an answer, and counts the answers; sessions/s is the
# answers over the time from the first datagram sent to the last answer received. Rounds alternate the
# forwarders; medians per burst size. Results: bench/results/udp.md.
#
# Environment: BURSTS (default "500 3000"), ROUNDS (default 5), WEIR_BIN (else built in release mode).
set -euo pipefail
NAME=udp-bench
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
BURSTS="${BURSTS:-500 3000}"
ROUNDS="${ROUNDS:-5}"
TMP="$(mktemp -d)"
SECONDS_EACH=0
source "$REPO_DIR/bench/loopback-lib.sh"
loopback_init python3 nginx
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$NGINX_STREAM" ] || { echo "$NAME: needs nginx's stream module (Debian: libnginx-mod-stream)" >&2; exit 1; }
mkdir -p "$REPO_DIR/bench/results"
export BENCH_DIR="$REPO_DIR/bench"

python3 "$REPO_DIR/bench/udp_burst.py" "$WEIR_BIN" "$TMP" "$NGINX_STREAM" "$ROUNDS" "$REPO_DIR/bench/results/udp.md" $BURSTS
cat "$REPO_DIR/bench/results/udp.md"
