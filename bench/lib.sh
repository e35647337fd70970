# Shared by the kernel-stage benchmarks (sourced): root and tool checks, the weir binary, a veth pair between
# two namespaces, starting the agent, and cleaning up everything the script created.
#
# A script sets TMP (a scratch directory) and adds what it creates to BENCH_NAMESPACES / BENCH_MOUNTS;
# bench_cleanup (installed as the EXIT trap by bench_init) removes them and stops the agent.

AGENT_PID=""
BENCH_NAMESPACES=()
BENCH_MOUNTS=()

# bench_init NAME TOOL...: checks root and tools, installs the cleanup trap, sets WEIR_BIN (building weir
# in release mode into .build-bench/ when it is not given).
bench_init() {
    local name=$1
    shift
    [ "$(id -u)" = 0 ] || { echo "$name: needs root (network namespaces)" >&2; exit 1; }
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$name: needs $tool" >&2; exit 1; }
    done
    trap bench_cleanup EXIT
    if [ -z "${WEIR_BIN:-}" ]; then
        (cd "$REPO_DIR" && swift build -c release --product weir --scratch-path .build-bench >&2)
        WEIR_BIN="$REPO_DIR/.build-bench/release/weir"
    fi
}

bench_cleanup() {
    [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
    for ns in "${BENCH_NAMESPACES[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    for mount in "${BENCH_MOUNTS[@]}"; do umount "$mount" 2>/dev/null || true; done
    rm -rf "$TMP"
}

# bench_veth_pair NS_A NS_B IF_A IF_B SUBNET (three octets, e.g. 10.203.0) MAC_PREFIX (e.g. 02:00:00:00:02):
# two namespaces joined by a veth pair, A = SUBNET.1, B = SUBNET.2, static neighbours (no ARP noise).
bench_veth_pair() {
    local ns_a=$1 ns_b=$2 if_a=$3 if_b=$4 subnet=$5 mac=$6
    ip netns add "$ns_a"
    ip netns add "$ns_b"
    BENCH_NAMESPACES+=("$ns_a" "$ns_b")
    ip link add "$if_a" netns "$ns_a" address "$mac:01" type veth peer name "$if_b" netns "$ns_b" address "$mac:02"
    ip -n "$ns_a" addr add "$subnet.1/24" dev "$if_a"
    ip -n "$ns_b" addr add "$subnet.2/24" dev "$if_b"
    for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
    ip -n "$ns_a" link set "$if_a" up
    ip -n "$ns_b" link set "$if_b" up
    ip -n "$ns_a" neigh replace "$subnet.2" lladdr "$mac:02" dev "$if_a" nud permanent
    ip -n "$ns_b" neigh replace "$subnet.1" lladdr "$mac:01" dev "$if_b" nud permanent
}

# bench_start_agent NS CONFIG LOG: runs the agent in NS and waits for /healthz on 127.0.0.1:9477.
bench_start_agent() {
    ip netns exec "$1" "$WEIR_BIN" agent --config "$2" >"$3" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 300); do
        ip netns exec "$1" curl -sf --max-time 1 http://127.0.0.1:9477/healthz >/dev/null 2>&1 && return 0
        kill -0 "$AGENT_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$3" >&2
    echo "the agent did not start" >&2
    exit 1
}

bench_stop_agent() {
    kill "$AGENT_PID"
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=""
}
