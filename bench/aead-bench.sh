#!/usr/bin/env bash
# transform.aead benchmark: an encrypted entry -> exit relay on loopback, weir against shadowsocks-libev
# (ss-tunnel -> ss-server) with the same cipher, iperf3 at the far end. Both relays carry the same bytes
# through the same two hops: a local port that takes plain TCP, an encrypted leg, an exit that decrypts and
# connects to iperf3.
#
#   bench/aead-bench.sh                       # builds weir (release, .build-bench/) and runs
#   WEIR_BIN=/path/to/weir bench/aead-bench.sh
#
# Environment (all optional):
#   BENCH_CIPHERS   ciphers to measure (default "chacha20-ietf-poly1305 aes-256-gcm")
#   BENCH_ROUNDS    iperf3 runs per setting; the median is reported (default 3)
#   BENCH_SECONDS   length of each run (default 5)
#
# Writes bench/results/aead.md. Exits non-zero only when something failed to run, never because of a number.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"
CIPHERS=${BENCH_CIPHERS:-"chacha20-ietf-poly1305 aes-256-gcm"}
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_EACH=${BENCH_SECONDS:-5}
TMP=$(mktemp -d /tmp/weir-aead-bench.XXXXXX)
NAME=aead-bench
PASSWORD="weir benchmark secret"
# shellcheck source=bench/loopback-lib.sh
. "$BENCH_DIR/loopback-lib.sh"
loopback_init iperf3 ss-server ss-tunnel python3

IPERF=$(free_port)
start iperf3 -s -B 127.0.0.1 -p "$IPERF"
wait_port "$IPERF"
direct=$(gbits "$IPERF")

rows=()
for cipher in $CIPHERS; do
    echo "== $cipher: shadowsocks-libev (ss-tunnel -> ss-server)" >&2
    server=$(free_port) tunnel=$(free_port)
    start ss-server -s 127.0.0.1 -p "$server" -k "$PASSWORD" -m "$cipher"
    server_pid=$LAST_PID
    start ss-tunnel -s 127.0.0.1 -p "$server" -l "$tunnel" -k "$PASSWORD" -m "$cipher" -L "127.0.0.1:$IPERF"
    tunnel_pid=$LAST_PID
    wait_port "$tunnel"
    shadowsocks=$(gbits "$tunnel")
    kill "$tunnel_pid" "$server_pid" 2>/dev/null || true

    echo "== $cipher: weir (listen.tcp + transform.aead client -> listen.tcp + transform.aead server)" >&2
    entry=$(free_port) exit_port=$(free_port)
    config=$(weir_config "$cipher" "$entry" "$exit_port" "      - type: transform.aead
        side: client
        cipher: $cipher
        password: \"$PASSWORD\"
        target: 127.0.0.1:$IPERF" "      - type: transform.aead
        side: server
        cipher: $cipher
        password: \"$PASSWORD\"" "      - type: connect.tcp
        addresses: [127.0.0.1:$exit_port]")
    weir=$(run_weir "$config" "$entry")

    rows+=("| $cipher | $weir | $shadowsocks | $(ratio "$weir" "$shadowsocks") |")
done

mkdir -p "$RESULTS_DIR"
{
    echo "### transform.aead ($(date -u +%Y-%m-%d), $(nproc) CPUs)"
    echo
    echo "Encrypted relay on loopback, iperf3 1 stream, median of $ROUNDS × ${SECONDS_EACH}s; without any relay: ${direct} Gbit/s."
    echo
    echo "| cipher | weir Gbit/s | shadowsocks-libev Gbit/s | weir / shadowsocks-libev |"
    echo "|---|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
} | tee "$RESULTS_DIR/aead.md"
