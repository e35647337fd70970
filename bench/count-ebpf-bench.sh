#!/usr/bin/env bash
# count.ebpf benchmark (needs root): how long a Prometheus scrape takes with a full 65,536-entry map, and
# what counting costs a veth pair's TCP throughput. Everything happens in two network namespaces the script
# creates and deletes; traffic never leaves them.
#
#   bench/count-ebpf-bench.sh                       # builds weir (release, .build-bench/) and runs
#   WEIR_BIN=/path/to/weir bench/count-ebpf-bench.sh
#
# Environment (all optional):
#   BENCH_ENTRIES   distinct source addresses flooded into the map, and its max_entries (default 65536)
#   BENCH_SCRAPES   scrapes timed per setting; the median and the slowest are reported (default 10)
#   BENCH_SECONDS   length of each iperf3 run (default 5)
#
# Writes bench/results/count-ebpf.md. Exits non-zero only when something failed to run, never because of a number.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"
ENTRIES=${BENCH_ENTRIES:-65536}
SCRAPES=${BENCH_SCRAPES:-10}
SECONDS_EACH=${BENCH_SECONDS:-5}
NS_A=weirbench-a$$
NS_B=weirbench-b$$
IF_A=wba$$
IF_B=wbb$$
TMP=$(mktemp -d /tmp/weir-count-bench.XXXXXX)

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
bench_init count-ebpf-bench ip curl python3 iperf3
bench_veth_pair "$NS_A" "$NS_B" "$IF_A" "$IF_B" 10.203.0 02:00:00:00:02
mkdir -p "$TMP/bpffs" "$TMP/pipelines.d"
mount -t bpf bpf "$TMP/bpffs"
BENCH_MOUNTS+=("$TMP/bpffs")

cat > "$TMP/weir.yaml" <<YAML
agent:
  id: bench
  bpf_pin_dir: $TMP/bpffs/weir
metrics:
  listen: 127.0.0.1:9477
log:
  level: warning
YAML

write_pipeline() {  # top_n
    cat > "$TMP/pipelines.d/count.yaml" <<YAML
pipelines:
  bench:
    stages:
      - type: count.ebpf
        interfaces: [$IF_A]
        max_entries: $ENTRIES
        top_n: $1
YAML
}

in_a() { ip netns exec "$NS_A" "$@"; }
metric() { in_a curl -sf --max-time 10 http://127.0.0.1:9477/metrics | awk -v name="$1" '$1 ~ "^"name"[{]" { print $2; exit }'; }

start_agent() { bench_start_agent "$NS_A" "$TMP/weir.yaml" "$TMP/agent.log"; }
stop_agent() { bench_stop_agent; }

# Times $SCRAPES scrapes. Prints "render_median render_max total_median total_max bytes series" (ms): render
# is until the first byte of the response (the agent reads the map and writes the text before sending),
# total until the last.
time_scrapes() {
    local line bytes=0 first=() total=()
    for _ in $(seq "$SCRAPES"); do
        line=$(in_a curl -s -o /dev/null -w '%{time_starttransfer} %{time_total} %{size_download}' http://127.0.0.1:9477/metrics)
        read -r f t bytes <<<"$line"
        first+=("$f")
        total+=("$t")
    done
    local series
    series=$(in_a curl -s http://127.0.0.1:9477/metrics | grep -c '^weir_ip_')
    stats() { printf '%s\n' "$@" | sort -n | awk '{ t[NR] = $1 * 1000 } END { printf "%.1f %.1f", t[int((NR + 1) / 2)], t[NR] }'; }
    echo "$(stats "${first[@]}") $(stats "${total[@]}") $bytes $series"
}

iperf_gbits() {  # Gbit/s of one iperf3 run from A to B
    in_a iperf3 -c 10.203.0.2 -t "$SECONDS_EACH" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

echo "== count.ebpf: flooding $ENTRIES source addresses" >&2
write_pipeline 1000
start_agent
# One UDP datagram from each of $ENTRIES spoofed sources (10.64.0.0 onwards), sent from B into A.
ip netns exec "$NS_B" python3 - "$ENTRIES" 10.203.0.1 <<'PY'
import socket, struct, sys
count, destination = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = socket.inet_aton(destination)
for i in range(count):
    src = struct.pack("!I", (10 << 24) | (64 << 16) + i)
    udp = struct.pack("!HHHH", 40000, 9, 16, 0) + b"x" * 8
    s.sendto(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, i & 0xffff, 0, 64, 17, 0, src, dst) + udp, (destination, 0))
PY
entries=$(metric weir_ebpf_map_entries)
evictions=$(metric weir_ebpf_map_evictions_total)
echo "map entries: $entries (evictions: $evictions)" >&2

read -r top_render top_render_max top_total top_total_max top_bytes top_series < <(time_scrapes)
write_pipeline "$ENTRIES"
kill -HUP "$AGENT_PID"
sleep 1
read -r all_render all_render_max all_total all_total_max all_bytes all_series < <(time_scrapes)

echo "== count.ebpf: TCP throughput over the veth pair, counted and not" >&2
ip netns exec "$NS_B" iperf3 -s -D -1 >/dev/null 2>&1 || true
sleep 0.3
counted=$(iperf_gbits)
stop_agent
ip netns exec "$NS_B" iperf3 -s -D -1 >/dev/null 2>&1 || true
sleep 0.3
uncounted=$(iperf_gbits)

mkdir -p "$RESULTS_DIR"
{
    echo "### count.ebpf ($(date -u +%Y-%m-%d), $(nproc) CPUs, kernel $(uname -r))"
    echo
    echo "Scrape of /metrics with $entries of $ENTRIES map entries filled ($evictions evicted), $SCRAPES scrapes each;"
    echo "render = until the first byte (map read and text written), total = until the last byte (curl):"
    echo
    echo "| setting | series | body | render median | render slowest | total median | total slowest |"
    echo "|---|---|---|---|---|---|---|"
    echo "| top_n: 1000 (default) | $top_series | $((top_bytes / 1024)) KiB | ${top_render} ms | ${top_render_max} ms | ${top_total} ms | ${top_total_max} ms |"
    echo "| top_n: $ENTRIES (every address) | $all_series | $((all_bytes / 1024)) KiB | ${all_render} ms | ${all_render_max} ms | ${all_total} ms | ${all_total_max} ms |"
    echo
    echo "TCP over the veth pair (iperf3, 1 stream, ${SECONDS_EACH}s): counted ${counted} Gbit/s, not counted ${uncounted} Gbit/s" \
        "(ratio $(python3 -c "print('%.2f' % ($counted / $uncounted))"))."
} | tee "$RESULTS_DIR/count-ebpf.md"
