#!/usr/bin/env bash
# wireguard benchmark (needs root, wireguard-go and wireguard-tools): time for the agent to apply N peers to a
# fresh interface and then a one-peer change (one removed, one added), as its "peers applied" log says;
# `wg setconf` (full) and `wg syncconf` (the same one-peer change) on a second wireguard-go interface alongside.
# Everything happens in a network namespace the script creates and deletes.
#
#   bench/wireguard-bench.sh                        # builds weir (release, .build-bench/) and runs
#   WEIR_BIN=/path/to/weir bench/wireguard-bench.sh
#
# Environment: BENCH_PEERS (default "1000 10000").
# Writes bench/results/wireguard.md. Exits non-zero only when something failed to run, never because of a number.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"
PEERS=${BENCH_PEERS:-1000 10000}
NS=weirbench-wg$$
TMP=$(mktemp -d /tmp/weir-wg-bench.XXXXXX)

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
bench_init wireguard-bench ip wg wireguard-go python3
ip netns add "$NS"
BENCH_NAMESPACES+=("$NS")
ip -n "$NS" link set lo up
export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1

# N peers with random public keys and one /32 each in 10.64.0.0/10; $2: index of the first peer.
peers() {
    python3 - "$1" "$2" <<'PY'
import base64, ipaddress, random, sys
count, first = int(sys.argv[1]), int(sys.argv[2])
for i in range(first, first + count):
    key = base64.b64encode(random.Random(i).randbytes(32)).decode()
    print(key, ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.64.0.0")) + i + 2))
PY
}

write_pipeline() {  # $1: peers file
    {
        echo "pipelines:"
        echo "  vpn:"
        echo "    stages:"
        echo "      - type: wireguard"
        echo "        interface: wbw$$"
        echo "        addresses: [10.64.0.1/10]"
        echo "        reconcile_interval: 1h"
        echo "        peers:"
        awk '{ printf "          - {name: p%d, public_key: \"%s\", allowed_ips: [%s]}\n", NR, $1, $2 }' "$1"
    } > "$TMP/pipelines.d/vpn.yaml"
}

took_ms() {  # the "took" of the newest "peers applied" log line, in ms
    grep "peers applied" "$TMP/agent.log" | tail -1 | sed -E 's/.*took=([0-9.e-]+) seconds.*/\1/' | python3 -c 'import sys; print("%.0f" % (float(sys.stdin.read()) * 1000))'
}

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

rows=()
for count in $PEERS; do
    rm -rf "$TMP/state" "$TMP/pipelines.d"; mkdir -p "$TMP/pipelines.d"
    cat > "$TMP/weir.yaml" <<YAML
agent:
  state_dir: $TMP/state
metrics:
  listen: 127.0.0.1:9477
log:
  level: info
YAML
    peers "$count" 0 > "$TMP/peers.txt"
    write_pipeline "$TMP/peers.txt"
    bench_start_agent "$NS" "$TMP/weir.yaml" "$TMP/agent.log"
    full=$(took_ms)
    on_device=$(ip netns exec "$NS" wg show "wbw$$" peers | wc -l)
    # One peer leaves, one joins.
    { tail -n +2 "$TMP/peers.txt"; peers 1 "$count"; } > "$TMP/peers2.txt"
    write_pipeline "$TMP/peers2.txt"
    before=$(grep -c "peers applied" "$TMP/agent.log")
    kill -HUP "$AGENT_PID"
    for _ in $(seq 1200); do
        [ "$(grep -c "peers applied" "$TMP/agent.log")" -gt "$before" ] && break
        sleep 0.1
    done
    delta=$(took_ms)
    bench_stop_agent
    ip -n "$NS" link del "wbw$$" 2>/dev/null || true

    # wg(8) on wireguard-go with the same peers: setconf from scratch, then syncconf with the one-peer change.
    ip netns exec "$NS" wireguard-go "wbc$$"
    conf() { echo "[Interface]"; echo "PrivateKey = $(wg genkey)"; awk '{ printf "[Peer]\nPublicKey = %s\nAllowedIPs = %s/32\n", $1, $2 }' "$1"; }
    conf "$TMP/peers.txt" > "$TMP/wg1.conf"
    conf "$TMP/peers2.txt" > "$TMP/wg2.conf"
    start=$(date +%s%N); ip netns exec "$NS" wg setconf "wbc$$" "$TMP/wg1.conf"; wg_full=$(ms_since "$start")
    start=$(date +%s%N); ip netns exec "$NS" wg syncconf "wbc$$" "$TMP/wg2.conf"; wg_delta=$(ms_since "$start")
    ip -n "$NS" link del "wbc$$"
    rows+=("| $count peers from scratch ($on_device on the interface) | ${full} ms | ${wg_full} ms (wg setconf) |")
    rows+=("| $count peers, one removed + one added | ${delta} ms | ${wg_delta} ms (wg syncconf) |")
done

mkdir -p "$RESULTS_DIR"
{
    echo "### wireguard ($(date -u +%Y-%m-%d), $(nproc) CPUs, kernel $(uname -r), wireguard-go $(dpkg-query -W -f '${Version}' wireguard-go 2>/dev/null || echo '?'))"
    echo
    echo "| operation | weir (plan + UAPI) | wg(8) on wireguard-go |"
    echo "|---|---:|---:|"
    printf '%s\n' "${rows[@]}"
} | tee "$RESULTS_DIR/wireguard.md"
