#!/usr/bin/env bash
# enforce.nftables benchmark (needs root): time to apply a 100,000-address allowlist from scratch, and a
# 1,000-address change to it, as the agent logs them; nft(8) loading the same set from a file alongside.
# Everything happens in a network namespace the script creates and deletes.
#
#   bench/nftables-bench.sh                        # builds weir (release, .build-bench/) and runs
#   WEIR_BIN=/path/to/weir bench/nftables-bench.sh
#
# Environment: BENCH_ELEMENTS (default 100000), BENCH_DELTA (default 1000).
# Writes bench/results/nftables.md. Exits non-zero only when something failed to run, never because of a number.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"
ELEMENTS=${BENCH_ELEMENTS:-100000}
DELTA=${BENCH_DELTA:-1000}
NS=weirbench-nft$$
TMP=$(mktemp -d /tmp/weir-nft-bench.XXXXXX)

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
bench_init nftables-bench ip nft python3 curl
ip netns add "$NS"
BENCH_NAMESPACES+=("$NS")
ip -n "$NS" link set lo up
ip -n "$NS" link add wbn0 type veth peer name wbn1
mkdir -p "$TMP/pipelines.d"
cat > "$TMP/weir.yaml" <<YAML
agent:
  state_dir: $TMP/state
metrics:
  listen: 127.0.0.1:9477
log:
  level: info
YAML

# Addresses in 11.0.0.0/8 and up (public space; nothing is sent anywhere). $1: first index, $2: count.
write_allowlist() {
    python3 - "$1" "$2" > "$TMP/pipelines.d/allow.yaml" <<'PY'
import sys, ipaddress
first, count = int(sys.argv[1]), int(sys.argv[2])
base = int(ipaddress.IPv4Address("11.0.0.0"))
print("pipelines:\n  egress:\n    stages:\n      - type: enforce.nftables\n        allow_destinations:\n          interfaces: [wbn0]\n          max_elements: 1048576\n          entries:")
for i in range(first, first + count):
    print("            - " + str(ipaddress.IPv4Address(base + i)))
PY
}

applied_ms() {  # the "took" of the newest "nftables applied" log line, in ms
    grep "nftables applied" "$TMP/agent.log" | tail -1 | sed -E 's/.*took=([0-9.e-]+) seconds.*/\1/' | python3 -c 'import sys; print("%.1f" % (float(sys.stdin.read()) * 1000))'
}

write_allowlist 0 "$ELEMENTS"
ip netns exec "$NS" "$WEIR_BIN" agent --config "$TMP/weir.yaml" >"$TMP/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 600); do
    grep -q "agent started" "$TMP/agent.log" && break
    kill -0 "$AGENT_PID" 2>/dev/null || { cat "$TMP/agent.log" >&2; exit 1; }
    sleep 0.1
done
scratch=$(applied_ms)
elements=$(ip netns exec "$NS" nft list set inet weir egress.dst4 | grep -o '11\.[0-9.]*' | wc -l)

# Replace the first $DELTA addresses with new ones: $DELTA removals and $DELTA additions.
write_allowlist "$DELTA" "$ELEMENTS"
before=$(grep -c "nftables applied" "$TMP/agent.log")
kill -HUP "$AGENT_PID"
for _ in $(seq 600); do
    [ "$(grep -c "nftables applied" "$TMP/agent.log")" -gt "$before" ] && break
    sleep 0.1
done
delta=$(applied_ms)
after=$(ip netns exec "$NS" nft list set inet weir egress.dst4 | grep -o '11\.[0-9.]*' | wc -l)
kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""

# nft(8) loading the same number of addresses into a new set, native syntax, from a file.
python3 - "$ELEMENTS" > "$TMP/set.nft" <<'PY'
import sys, ipaddress
count = int(sys.argv[1]); base = int(ipaddress.IPv4Address("11.0.0.0"))
print("add table inet nftbench")
print("add set inet nftbench s { type ipv4_addr; size 1048576; }")
print("add element inet nftbench s { " + ", ".join(str(ipaddress.IPv4Address(base + i)) for i in range(count)) + " }")
PY
start=$(date +%s%N)
ip netns exec "$NS" nft -f "$TMP/set.nft"
nft_scratch=$(( ($(date +%s%N) - start) / 1000000 ))

mkdir -p "$RESULTS_DIR"
{
    echo "### enforce.nftables ($(date -u +%Y-%m-%d), $(nproc) CPUs, kernel $(uname -r), nftables $(nft -v | awk '{print $2}'))"
    echo
    echo "| operation | weir | goal | nft -f (native syntax) |"
    echo "|---|---:|---:|---:|"
    echo "| $ELEMENTS-address allowlist from scratch ($elements in the set) | ${scratch} ms | < 1000 ms | ${nft_scratch} ms |"
    echo "| $DELTA removed + $DELTA added ($after in the set after) | ${delta} ms | < 50 ms | minutes (see README) |"
} | tee "$RESULTS_DIR/nftables.md"
