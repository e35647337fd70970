#!/usr/bin/env bash
# wireguard tunnel benchmark (needs root, wireguard-go, wireguard-tools, iperf3): TCP goodput through a tunnel
# whose server side weir's wireguard stage runs, with the client configured only from `weir wireguard config`;
# next to the same wireguard-go tunnel set up by hand with wg(8); then the weir tunnel with shape.tc capping
# each client address (per: client_ip) both ways. Two namespaces joined by a veth pair, created and deleted here.
#
#   bench/wireguard-tunnel-bench.sh
#   WEIR_BIN=/path/to/weir bench/wireguard-tunnel-bench.sh
#
# Environment: BENCH_ROUNDS (iperf3 runs per setting, median reported; default 3), BENCH_SECONDS (default 4),
# BENCH_RATE (the per-user rate, default 50mbit).
# Writes bench/results/wireguard-tunnel.md. Exits non-zero only when something failed to run, never because of a number.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_EACH=${BENCH_SECONDS:-4}
RATE=${BENCH_RATE:-50mbit}
NS_S=weirbench-wgs$$
NS_C=weirbench-wgc$$
TMP=$(mktemp -d /tmp/weir-wg-tunnel-bench.XXXXXX)

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
bench_init wireguard-tunnel-bench ip wg wg-quick wireguard-go iperf3 python3 curl
bench_veth_pair "$NS_S" "$NS_C" wts$$ wtc$$ 10.205.0 02:00:00:00:05
export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1
WGS=wbs$$ WGC=wbc$$ HS=whs$$ HC=whc$$

mkdir -p "$TMP/pipelines.d"
cat > "$TMP/weir.yaml" <<YAML
agent:
  state_dir: $TMP/state
metrics:
  listen: 127.0.0.1:9477
log:
  level: info
YAML
server_pipeline() {  # $1: extra stages
    cat > "$TMP/pipelines.d/vpn.yaml" <<YAML
pipelines:
  vpn:
    stages:
      - type: wireguard
        interface: $WGS
        endpoint: 10.205.0.1:51820
        addresses: [10.89.0.1/24]
        pool: [10.89.0.0/24]
        peers:
          - name: alice
$1
YAML
}
server_pipeline ""
bench_start_agent "$NS_S" "$TMP/weir.yaml" "$TMP/agent.log"

# The client from the exported configuration only.
"$WEIR_BIN" wireguard config --config "$TMP/weir.yaml" vpn alice > "$TMP/alice.conf"
chmod 600 "$TMP/alice.conf"
wg-quick strip "$TMP/alice.conf" > "$TMP/alice.setconf"
ip netns exec "$NS_C" wireguard-go "$WGC"
ip netns exec "$NS_C" wg setconf "$WGC" "$TMP/alice.setconf"
ip -n "$NS_C" addr add 10.89.0.2/32 dev "$WGC"
ip -n "$NS_C" link set "$WGC" up
ip -n "$NS_C" route add 10.89.0.0/24 dev "$WGC"

# The same tunnel by hand: wireguard-go and wg(8) on both sides, another port and subnet.
ip netns exec "$NS_S" wireguard-go "$HS"
ip netns exec "$NS_C" wireguard-go "$HC"
(umask 077; wg genkey > "$TMP/hs.key"; wg genkey > "$TMP/hc.key")
ip netns exec "$NS_S" wg set "$HS" private-key "$TMP/hs.key" listen-port 51821 peer "$(wg pubkey < "$TMP/hc.key")" allowed-ips 10.90.0.2/32
ip netns exec "$NS_C" wg set "$HC" private-key "$TMP/hc.key" peer "$(wg pubkey < "$TMP/hs.key")" endpoint 10.205.0.1:51821 allowed-ips 10.90.0.0/24
ip -n "$NS_S" addr add 10.90.0.1/24 dev "$HS"; ip -n "$NS_S" link set "$HS" up
ip -n "$NS_C" addr add 10.90.0.2/24 dev "$HC"; ip -n "$NS_C" link set "$HC" up

ip netns exec "$NS_S" iperf3 -s -B 10.89.0.1 -p 5201 >/dev/null 2>&1 &
ip netns exec "$NS_S" iperf3 -s -B 10.90.0.1 -p 5202 >/dev/null 2>&1 &
sleep 1

# Median goodput in Mbit/s of $ROUNDS iperf3 runs from the client to $1:$2 ($3: -R for the download).
goodput() {
    local runs=()
    for _ in $(seq "$ROUNDS"); do
        runs+=("$(ip netns exec "$NS_C" iperf3 -c "$1" -p "$2" ${3:-} -t "$SECONDS_EACH" -O 1 -J |
            python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))')")
    done
    printf '%s\n' "${runs[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

weir_up=$(goodput 10.89.0.1 5201); weir_down=$(goodput 10.89.0.1 5201 -R)
hand_up=$(goodput 10.90.0.1 5202); hand_down=$(goodput 10.90.0.1 5202 -R)

# Per-user shaping on the weir tunnel: each client address capped at $RATE, both ways.
server_pipeline "      - type: shape.tc
        interface: $WGS
        direction: both
        per: client_ip
        rate: $RATE"
kill -HUP "$AGENT_PID"
sleep 2
ip netns exec "$NS_C" iperf3 -c 10.89.0.1 -p 5201 -t 1 >/dev/null 2>&1 || true  # the class is made on first sight
shaped_up=$(goodput 10.89.0.1 5201); shaped_down=$(goodput 10.89.0.1 5201 -R)
rate_mbit=$(python3 -c "import re,sys; m = re.fullmatch(r'([0-9.]+)(k|m|g)bit', sys.argv[1]); print(float(m[1]) * {'k': 1e-3, 'm': 1, 'g': 1e3}[m[2]])" "$RATE")
bench_stop_agent
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }

mkdir -p "$RESULTS_DIR"
{
    echo "### wireguard tunnel ($(date -u +%Y-%m-%d), $(nproc) CPUs, kernel $(uname -r), wireguard-go $(dpkg-query -W -f '${Version}' wireguard-go 2>/dev/null || echo '?'), iperf3 median of $ROUNDS x ${SECONDS_EACH} s)"
    echo
    echo "| tunnel | upload Mbit/s | download Mbit/s |"
    echo "|---|---:|---:|"
    echo "| weir's wireguard stage (client from \`weir wireguard config\`) | $weir_up | $weir_down |"
    echo "| wireguard-go by hand (wg set) | $hand_up | $hand_down |"
    echo "| weir / by hand | $(ratio "$weir_up" "$hand_up")x | $(ratio "$weir_down" "$hand_down")x |"
    echo "| weir + shape.tc per client_ip at $RATE | $shaped_up ($(ratio "$shaped_up" "$rate_mbit") of the rate) | $shaped_down ($(ratio "$shaped_down" "$rate_mbit") of the rate) |"
} | tee "$RESULTS_DIR/wireguard-tunnel.md"
