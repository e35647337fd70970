# Shared by the loopback relay benchmarks (sourced by aead-bench.sh and tls-bench.sh): tool checks, the weir
# binary, background processes and their cleanup, free ports, waiting for listeners, and iperf3 medians.
#
# A script sets NAME, ROUNDS, SECONDS_EACH and TMP, then calls loopback_init TOOL... (BENCH_KEEP_TMP=1 keeps TMP.)

PIDS=()

# loopback_init TOOL...: checks the tools, installs the cleanup trap, sets WEIR_BIN (building weir in release
# mode into .build-bench/ when it is not given).
loopback_init() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$NAME: needs $tool" >&2; exit 1; }
    done
    trap loopback_cleanup EXIT
    if [ -z "${WEIR_BIN:-}" ]; then
        (cd "$REPO_DIR" && swift build -c release --product weir --scratch-path .build-bench >&2)
        WEIR_BIN="$REPO_DIR/.build-bench/release/weir"
    fi
}

loopback_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${BENCH_KEEP_TMP:-}" ] || rm -rf "$TMP"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits until something listens on 127.0.0.1:$1, without connecting: a probe through a relay would reach
# iperf3 as a client that never sends its parameters, which can leave iperf3 refusing the next test.
wait_port() {
    local hex
    hex=$(printf '%04X' "$1")
    for _ in $(seq 100); do
        grep -q "^ *[0-9]*: 0100007F:$hex 00000000:0000 0A" /proc/net/tcp && return 0
        sleep 0.05
    done
    echo "$NAME: nothing listens on port $1" >&2
    exit 1
}

# start COMMAND...: runs in the background (stderr to $TMP/stderr.log), remembered for cleanup, as LAST_PID.
start() {
    "$@" >/dev/null 2>>"$TMP/stderr.log" &
    PIDS+=($!)
    LAST_PID=$!
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Gbit/s of one iperf3 run (1 stream, $SECONDS_EACH s) through port $1.
gbit_once() {
    timeout $((SECONDS_EACH + 30)) iperf3 -c 127.0.0.1 -p "$1" -t "$SECONDS_EACH" -J |
        python3 -c 'import json, sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

# Median Gbit/s of $ROUNDS iperf3 runs through port $1.
gbits() {
    local runs=()
    for _ in $(seq "$ROUNDS"); do runs+=("$(gbit_once "$1")"); done
    printf '%s\n' "${runs[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

ratio() { python3 -c "print('%.2fx' % ($1 / $2))"; }

# weir_config NAME ENTRY_PORT EXIT_PORT ENTRY_STAGES EXIT_STAGES CONNECTOR [EXIT_TARGET_PORT]: one agent with
# an entry pipeline (listen.tcp, ENTRY_STAGES, CONNECTOR) and an exit pipeline (listen.tcp, EXIT_STAGES,
# connect.tcp to EXIT_TARGET_PORT, default $IPERF); prints the config's path.
weir_config() {
    local metrics
    metrics=$(free_port)
    mkdir -p "$TMP/$1"
    echo "$metrics" > "$TMP/$1/metrics.port"
    cat > "$TMP/$1/weir.yaml" <<YAML
agent:
  state_dir: $TMP/$1
metrics:
  listen: 127.0.0.1:$metrics
log:
  level: warning
pipelines:
  entry:
    stages:
      - type: listen.tcp
        address: 127.0.0.1:$2
$4
$6
  exit:
    stages:
      - type: listen.tcp
        address: 127.0.0.1:$3
$5
      - type: connect.tcp
        addresses: [127.0.0.1:${7:-$IPERF}]
YAML
    echo "$TMP/$1/weir.yaml"
}

# start_weir CONFIG: runs the agent until its health endpoint answers; its pid in WEIR_PID. Waits for the health
# endpoint rather than probing the entry port: a probe through the relay would reach iperf3 as a client that
# never sends its parameters, which can leave iperf3 refusing the next test.
start_weir() {
    start "$WEIR_BIN" agent --config "$1"
    WEIR_PID=$LAST_PID
    local metrics
    metrics=$(cat "$(dirname "$1")/metrics.port")
    for _ in $(seq 100); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$metrics/healthz', timeout=0.5)" 2>/dev/null && break
        sleep 0.05
    done
}

# run_weir CONFIG ENTRY_PORT [MEASURE]: runs the agent, measures through ENTRY_PORT with MEASURE (default
# gbits), stops it.
run_weir() {
    start_weir "$1"
    "${3:-gbits}" "$2"
    stop_pid "$WEIR_PID"
}
