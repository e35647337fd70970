#!/usr/bin/env bash
# limit.bandwidth: a rate-limited TCP forward, weir against nginx's stream proxy with proxy_upload_rate and
# proxy_download_rate (HAProxy 2.6 has no bandwidth limit), the same per-connection rate, in one run: how close
# each holds the rate and the CPU it spends per GB moved. weir twice: relayed (listen.tcp → limit.bandwidth →
# connect.tcp to an IP literal: raw sockets and splice) and through SwiftNIO channels (the same pipeline with the
# target by name, which takes it off the relay), so the table shows what the relay saves.
#
# Environment: BENCH_ROUNDS (3), BENCH_SECONDS (5), BENCH_RATE_MIB (250: MiB/s per connection and direction),
# BENCH_STREAMS (4: parallel connections of the multi-stream rows).
# Writes bench/results/bandwidth.md. Exits non-zero only when something failed to run, never because of a number.
set -euo pipefail
NAME=bandwidth-bench
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${BENCH_ROUNDS:-3}"
SECONDS_EACH="${BENCH_SECONDS:-5}"
RATE_MIB="${BENCH_RATE_MIB:-250}"
STREAMS="${BENCH_STREAMS:-4}"
TMP="$(mktemp -d)"
source "$REPO_DIR/bench/loopback-lib.sh"
loopback_init iperf3 nginx python3
NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$NGINX_STREAM" ] || { echo "$NAME: needs nginx's stream module (Debian: libnginx-mod-stream)" >&2; exit 1; }
mkdir -p "$REPO_DIR/bench/results"

IPERF=$(free_port)
RELAYED=$(free_port)
CHANNELS=$(free_port)
NGINX=$(free_port)
METRICS=$(free_port)
start iperf3 -s -B 127.0.0.1 -p "$IPERF"
wait_port "$IPERF"

mkdir -p "$TMP/weir"
cat > "$TMP/weir/weir.yaml" <<YAML
agent:
  state_dir: $TMP/weir
metrics:
  listen: 127.0.0.1:$METRICS
log:
  level: warning
pipelines:
  relayed:
    stages:
      - type: listen.tcp
        address: 127.0.0.1:$RELAYED
      - type: limit.bandwidth
        rate: ${RATE_MIB}MiB/s
      - type: connect.tcp
        addresses: [127.0.0.1:$IPERF]
  channels:
    stages:
      - type: listen.tcp
        address: 127.0.0.1:$CHANNELS
      - type: limit.bandwidth
        rate: ${RATE_MIB}MiB/s
      - type: connect.tcp
        addresses: [localhost:$IPERF]
YAML
echo "$METRICS" > "$TMP/weir/metrics.port"
start_weir "$TMP/weir/weir.yaml"
wait_port "$RELAYED"
wait_port "$CHANNELS"

mkdir -p "$TMP/nginx"
cat > "$TMP/nginx.conf" <<CONF
load_module $NGINX_STREAM;
daemon off;
worker_processes auto;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log error;
events { worker_connections 1024; }
stream {
    server {
        listen 127.0.0.1:$NGINX;
        proxy_pass 127.0.0.1:$IPERF;
        proxy_upload_rate ${RATE_MIB}m;
        proxy_download_rate ${RATE_MIB}m;
    }
}
CONF
start nginx -c "$TMP/nginx.conf" -e "$TMP/nginx/error.log"
NGINX_PID=$LAST_PID
wait_port "$NGINX"

# CPU seconds so far of a process and its children (nginx's workers).
cpu_seconds() {
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    python3 -c "print($total / $(getconf CLK_TCK))"
}

# measure PORT PID STREAMS [-R]: "Gbit/s CPU-seconds-per-GB" of one iperf3 run through PORT.
measure() {
    local before after json
    before=$(cpu_seconds "$2")
    json=$(timeout $((SECONDS_EACH + 30)) iperf3 -c 127.0.0.1 -p "$1" -t "$SECONDS_EACH" -P "$3" ${4:-} -J)
    after=$(cpu_seconds "$2")
    python3 -c '
import json, sys
bits = json.loads(sys.argv[1])["end"]["sum_received"]["bits_per_second"]
seconds, cpu = float(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3])
print("%.3f %.3f" % (bits / 1e9, cpu / (bits * seconds / 8 / 1e9)))' "$json" "$SECONDS_EACH" "$before" "$after"
}

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# The configured rate in Gbit/s, per connection.
RATE_GBIT=$(python3 -c "print($RATE_MIB * 1048576 * 8 / 1e9)")
declare -A PORTS=([weir relayed]=$RELAYED [weir through channels]=$CHANNELS [nginx]=$NGINX)
declare -A PROCS=([weir relayed]=$WEIR_PID [weir through channels]=$WEIR_PID [nginx]=$NGINX_PID)
ORDER=("weir relayed" "weir through channels" "nginx")
rows=()
for test in "1 upload" "1 download" "$STREAMS upload"; do
    set -- $test
    streams=$1 direction=$2
    flag=""
    [ "$direction" = download ] && flag="-R"
    declare -A gbits=() cost=()
    for round in $(seq "$ROUNDS"); do
        # Alternating order, so each round compares the same moment of the machine.
        for name in "${ORDER[@]}"; do
            read -r g c < <(measure "${PORTS[$name]}" "${PROCS[$name]}" "$streams" $flag)
            gbits[$name]+="$g " cost[$name]+="$c "
            echo "   $streams × $direction, round $round: $name $g Gbit/s, $c CPU s/GB" >&2
        done
    done
    nginx_cost=$(median ${cost[nginx]})
    for name in "${ORDER[@]}"; do
        g=$(median ${gbits[$name]}) c=$(median ${cost[$name]})
        of=$(python3 -c "print('%.3f' % ($g / ($RATE_GBIT * $streams)))")
        rows+=("| $streams × $direction | $name | $g | $of | $c | $(ratio "$c" "$nginx_cost") |")
    done
    unset gbits cost
done

{
    echo "# limit.bandwidth: rate-limited forward, weir vs nginx stream proxy"
    echo
    echo "$(date -u +%Y-%m-%d), ${RATE_MIB} MiB/s per connection and direction ($RATE_GBIT Gbit/s), iperf3 ${SECONDS_EACH} s, medians of $ROUNDS rounds."
    echo
    echo "| connections × direction | forwarder | Gbit/s | of the limit | CPU s/GB | CPU vs nginx |"
    echo "|---|---|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
} | tee "$REPO_DIR/bench/results/bandwidth.md"
