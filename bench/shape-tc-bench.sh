#!/usr/bin/env bash
# shape.tc benchmark (needs root): how close TCP gets to a ceiling shaped by weir, next to the same HTB tree
# written by hand with tc (what wondershaper-style scripts do), and what weir's root qdisc and classifier cost
# traffic that is not shaped. Everything happens in two network namespaces the script creates and deletes;
# traffic never leaves them.
#
#   bench/shape-tc-bench.sh                       # builds weir (release, .build-bench/) and runs
#   WEIR_BIN=/path/to/weir bench/shape-tc-bench.sh
#
# Environment (all optional):
#   BENCH_CEILINGS  ceilings to measure (default "50mbit 500mbit 2gbit")
#   BENCH_ROUNDS    iperf3 runs per setting; the median is reported (default 3)
#   BENCH_SECONDS   length of each iperf3 run, after a 1 s warm-up that is not counted (default 4)
#
# Writes bench/results/shape-tc.md. Exits non-zero only when something failed to run, never because of a number.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"
CEILINGS=${BENCH_CEILINGS:-"50mbit 500mbit 2gbit"}
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_EACH=${BENCH_SECONDS:-4}
NS_A=weirshape-a$$
NS_B=weirshape-b$$
IF_A=wsa$$
IF_B=wsb$$
TMP=$(mktemp -d /tmp/weir-shape-bench.XXXXXX)

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
bench_init shape-tc-bench ip tc curl python3 iperf3
bench_veth_pair "$NS_A" "$NS_B" "$IF_A" "$IF_B" 10.204.0 02:00:00:00:03
mkdir -p "$TMP/pipelines.d" "$TMP/state"
ip netns exec "$NS_B" iperf3 -s -B 10.204.0.2 -p 5201 >/dev/null 2>&1 &
ip netns exec "$NS_B" iperf3 -s -B 10.204.0.2 -p 5202 >/dev/null 2>&1 &
sleep 0.5

cat > "$TMP/weir.yaml" <<YAML
agent:
  id: bench
  state_dir: $TMP/state
metrics:
  listen: 127.0.0.1:9477
log:
  level: warning
include: ["pipelines.d/*.yaml"]
pipelines: {}
YAML

in_a() { ip netns exec "$NS_A" "$@"; }

reload() {
    kill -HUP "$AGENT_PID"
    sleep 1
}

# Median goodput in Mbit/s of $ROUNDS iperf3 runs from A to B on port $1.
goodput() {
    local runs=()
    for _ in $(seq "$ROUNDS"); do
        runs+=("$(in_a iperf3 -c 10.204.0.2 -p "$1" -t "$SECONDS_EACH" -O 1 -J |
            python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))')")
    done
    printf '%s\n' "${runs[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

mbit() { python3 -c "import re,sys; m = re.fullmatch(r'([0-9.]+)(k|m|g)bit', sys.argv[1]); print(float(m[1]) * {'k': 1e-3, 'm': 1, 'g': 1e3}[m[2]])" "$1"; }
ratio() { python3 -c "print('%.3f' % ($1 / $2))"; }

bench_start_agent "$NS_A" "$TMP/weir.yaml" "$TMP/agent.log"
rows=()
for ceil in $CEILINGS; do
    echo "== ceiling $ceil: weir" >&2
    cat > "$TMP/pipelines.d/shape.yaml" <<YAML
pipelines:
  bench:
    stages:
      - type: shape.tc
        interface: $IF_A
        rate: $ceil
YAML
    reload
    weir=$(goodput 5201)
    rm "$TMP/pipelines.d/shape.yaml"
    reload
    [ "$(in_a tc qdisc show dev "$IF_A" | head -1 | awk '{ print $2 }')" = noqueue ] || { echo "shape-tc-bench: weir left a qdisc" >&2; exit 1; }

    echo "== ceiling $ceil: tc by hand" >&2
    in_a tc qdisc add dev "$IF_A" root handle 1: htb default 10
    in_a tc class add dev "$IF_A" parent 1: classid 1:1 htb rate "$ceil"
    in_a tc class add dev "$IF_A" parent 1:1 classid 1:10 htb rate "$ceil"
    in_a tc qdisc add dev "$IF_A" parent 1:10 handle 10: pfifo
    hand=$(goodput 5201)
    in_a tc qdisc del dev "$IF_A" root

    wire=$(mbit "$ceil")
    rows+=("| $ceil | $weir | $(ratio "$weir" "$wire") | $hand | $(ratio "$hand" "$wire") | $(ratio "$weir" "$hand") |")
done

echo "== unshaped traffic past weir's root qdisc and classifier" >&2
# A forward pipeline's stage shapes only its listener's port: other traffic passes weir's root qdisc and
# classifier unshaped (HTB's direct queue). Compared with no qdisc at all (noqueue).
cat > "$TMP/pipelines.d/shape.yaml" <<YAML
pipelines:
  listener:
    stages:
      - type: listen.tcp
        address: 10.204.0.1:7000
      - type: shape.tc
        interface: $IF_A
        rate: 10mbit
      - type: connect.tcp
        addresses: [127.0.0.1:9]
YAML
reload
past_weir=$(goodput 5202)
rm "$TMP/pipelines.d/shape.yaml"
reload
no_qdisc=$(goodput 5202)

mkdir -p "$RESULTS_DIR"
{
    echo "### shape.tc ($(date -u +%Y-%m-%d), $(nproc) CPUs, kernel $(uname -r))"
    echo
    echo "TCP goodput (iperf3, 1 stream, median of $ROUNDS × ${SECONDS_EACH}s after 1 s warm-up) through one HTB class;"
    echo "frames carry 1448 payload bytes in 1514, so 0.956 of the ceiling is the most goodput can reach:"
    echo
    echo "| ceiling | weir Mbit/s | of ceiling | tc by hand Mbit/s | of ceiling | weir / tc |"
    echo "|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "Traffic weir does not shape, past its root qdisc and classifier: ${past_weir} Mbit/s;" \
        "with no qdisc at all: ${no_qdisc} Mbit/s (ratio $(ratio "$past_weir" "$no_qdisc"))."
} | tee "$RESULTS_DIR/shape-tc.md"
