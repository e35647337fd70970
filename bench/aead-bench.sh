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
#   BENCH_ROUNDS    rounds; each measures both relays once, in alternating order (default 5). The median and
#                   every round's ratio are reported: the goal holds only if it holds in every round.
#   BENCH_SECONDS   length of each run (default 5)
#
# Writes bench/results/aead.md. Exits non-zero only when something failed to run, never because of a number.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"
CIPHERS=${BENCH_CIPHERS:-"chacha20-ietf-poly1305 aes-256-gcm"}
ROUNDS=${BENCH_ROUNDS:-5}
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
    echo "== $cipher: shadowsocks-libev (ss-tunnel -> ss-server) and weir (listen.tcp + transform.aead client -> listen.tcp + transform.aead server)" >&2
    server=$(free_port) tunnel=$(free_port)
    start ss-server -s 127.0.0.1 -p "$server" -k "$PASSWORD" -m "$cipher"
    server_pid=$LAST_PID
    start ss-tunnel -s 127.0.0.1 -p "$server" -l "$tunnel" -k "$PASSWORD" -m "$cipher" -L "127.0.0.1:$IPERF"
    tunnel_pid=$LAST_PID
    wait_port "$tunnel"
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
    start_weir "$config"
    # Both relays run throughout; each round measures both, the first one alternating.
    weir_runs=() ss_runs=() ratios=()
    for round in $(seq "$ROUNDS"); do
        if ((round % 2)); then
            w=$(gbit_once "$entry"); s=$(gbit_once "$tunnel")
        else
            s=$(gbit_once "$tunnel"); w=$(gbit_once "$entry")
        fi
        weir_runs+=("$w") ss_runs+=("$s") ratios+=("$(ratio "$w" "$s")")
        echo "   round $round: weir $w, shadowsocks-libev $s Gbit/s (${ratios[-1]})" >&2
    done
    stop_pid "$WEIR_PID"
    kill "$tunnel_pid" "$server_pid" 2>/dev/null || true
    median_of() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
    weir=$(median_of "${weir_runs[@]}") shadowsocks=$(median_of "${ss_runs[@]}")
    lowest=$(printf '%s\n' "${ratios[@]}" | tr -d x | sort -n | head -n1)
    rows+=("| $cipher | $weir | $shadowsocks | $(ratio "$weir" "$shadowsocks") | ${lowest}x | ${ratios[*]} |")
done

mkdir -p "$RESULTS_DIR"
{
    echo "### transform.aead ($(date -u +%Y-%m-%d), $(nproc) CPUs)"
    echo
    echo "Encrypted relay on loopback, iperf3 1 stream, $ROUNDS rounds of ${SECONDS_EACH}s each (both relays measured in every round, in alternating order), medians; without any relay: ${direct} Gbit/s."
    echo
    echo "| cipher | weir Gbit/s | shadowsocks-libev Gbit/s | weir / shadowsocks-libev | lowest round | rounds |"
    echo "|---|---:|---:|---:|---:|---|"
    printf '%s\n' "${rows[@]}"
} | tee "$RESULTS_DIR/aead.md"
