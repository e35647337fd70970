#!/usr/bin/env bash
# Plain TCP forwarding benchmark: weir vs HAProxy (default, and with splice-auto) vs socat, side by side, on
# loopback only.
#
#   bench/forward-bench.sh                      # builds weir (release, .build-bench/) and runs
#   WEIR_BIN=/path/to/weir bench/forward-bench.sh   # skips the build
#
# For each forwarder it measures iperf3 throughput (1 stream, 8 streams, optionally 1 stream reversed),
# new connections per second (wrk with `Connection: close` against nginx behind the forwarder) and the
# forwarder's peak RSS (VmHWM), and its CPU time per connection and per GB. The Markdown table is printed and
# written to bench/results/forward.md.
#
# Environment (all optional):
#   WEIR_BIN            weir binary to use; unset = build it with `swift build -c release --scratch-path .build-bench`
#   BENCH_SECONDS       length of each measurement (default 5)
#   BENCH_IPERF_SECONDS iperf3 test length (default BENCH_SECONDS)
#   BENCH_WRK_SECONDS   wrk test length (default BENCH_SECONDS)
#   BENCH_ROUNDS        rounds; each number reported is the median over the rounds (default 3)
#   BENCH_STREAMS       parallel streams of the multi-stream test (default 8)
#   BENCH_CONNS         wrk connections (default 32)
#   BENCH_REVERSE       1 = also measure 1 stream reversed (iperf3 -R, target to client) (default 1)
#   BENCH_BASELINE      1 = also measure the backends directly, without a forwarder (default 1)
#   BENCH_PORT_MIN/MAX  range the loopback ports are picked from (default 20000-32000, below the ephemeral range)
#   BENCH_KEEP_TMP      1 = keep the scratch directory (configs, logs) instead of deleting it
#
# The environment is passed on to weir (e.g. NIO_SINGLETON_GROUP_LOOP_COUNT=1 runs it on one event loop).
#
# Exits non-zero only if something failed to run (a build, a process, a measurement), never because of a number.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"

SECONDS_EACH=${BENCH_SECONDS:-5}
IPERF_SECONDS=${BENCH_IPERF_SECONDS:-$SECONDS_EACH}
WRK_SECONDS=${BENCH_WRK_SECONDS:-$SECONDS_EACH}
STREAMS=${BENCH_STREAMS:-8}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNS:-32}
REVERSE=${BENCH_REVERSE:-1}
BASELINE=${BENCH_BASELINE:-1}
PORT_MIN=${BENCH_PORT_MIN:-20000}
PORT_MAX=${BENCH_PORT_MAX:-32000}
FORWARDERS=(weir haproxy haproxy-splice socat)

START_TIME=$(date +%s)
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ROUND=0                  # the current round, for messages
FAILED=0                 # set when any measurement or process failed; makes the exit status non-zero
NOTES=()                 # lines printed under the table
note() { NOTES+=("$*"); log "note: $*"; }
fail() { FAILED=1; note "FAILED: $*"; }

# ---------------------------------------------------------------------------------------------------------
# Process bookkeeping and cleanup. Every process is started in its own session (setsid), so its whole
# process group (socat's forked children, nginx and haproxy workers) can be ended by the group id.
TMP=$(mktemp -d /tmp/weir-bench.XXXXXX)
declare -A PIDS=()       # name -> pid (== pgid)

start_proc() {           # start_proc NAME CMD... ; stdout+stderr go to $TMP/NAME.log
    local name=$1; shift
    setsid "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    PIDS[$name]=$!
}

alive() { [[ -n "${PIDS[$1]:-}" ]] && kill -0 "${PIDS[$1]}" 2>/dev/null; }

stop_proc() {            # stop_proc NAME [GRACE_SECONDS] ; SIGTERM the group, SIGKILL after the grace period
    local name=$1 grace=${2:-5} pid=${PIDS[$1]:-} i
    [[ -z "$pid" ]] && return 0
    unset "PIDS[$name]"
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 1
    fi
    wait "$pid" 2>/dev/null || true
    # A group member may outlive the leader (e.g. a socat child): finish the group off.
    kill -KILL -- "-$pid" 2>/dev/null || true
    return 0
}

cleanup() {
    local rc=$? name
    trap - EXIT INT TERM
    for name in "${!PIDS[@]}"; do stop_proc "$name" 2 || true; done
    if [[ -d "$TMP" ]]; then
        rm -rf "$RESULTS_DIR/logs"
        mkdir -p "$RESULTS_DIR/logs"
        cp -f "$TMP"/*.log "$TMP"/*.yaml "$TMP"/*.cfg "$TMP"/*.conf "$RESULTS_DIR/logs/" 2>/dev/null || true
        if [[ "${BENCH_KEEP_TMP:-0}" == 1 ]]; then log "scratch directory kept: $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

show_log() { [[ -f "$TMP/$1.log" ]] && { log "last lines of $1.log:"; tail -n 20 "$TMP/$1.log" >&2; } || true; }

# ---------------------------------------------------------------------------------------------------------
# Tools.
install_missing() {
    local -a need=()
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v socat >/dev/null || need+=(socat)
    command -v iperf3 >/dev/null || need+=(iperf3)
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    command -v ss >/dev/null || need+=(iproute2)
    command -v python3 >/dev/null || need+=(python3)
    [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || need+=(nginx-light)
    ((${#need[@]} == 0)) && return 0
    log "installing: ${need[*]}"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 || die "apt-get install ${need[*]} failed"
}
install_missing
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [[ -z "${WEIR_BIN:-}" ]]; then
    command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"
    command -v swift >/dev/null || die "swift not found (set WEIR_BIN to use a prebuilt weir)"
    log "building weir (release, scratch path .build-bench; several minutes the first time)"
    (cd "$REPO_DIR" && swift build -c release --product weir --scratch-path .build-bench >&2) || die "swift build failed"
    WEIR_BIN="$(cd "$REPO_DIR" && swift build -c release --product weir --scratch-path .build-bench --show-bin-path)/weir"
fi
[[ -x "$WEIR_BIN" ]] || die "WEIR_BIN=$WEIR_BIN is not an executable"

# ---------------------------------------------------------------------------------------------------------
# Ports: free loopback ports below the ephemeral range, so wrk's many short connections cannot collide with them.
read -r -a PORTS <<<"$(python3 - "$PORT_MIN" "$PORT_MAX" <<'EOF'
import random, socket, sys
lo, hi = int(sys.argv[1]), int(sys.argv[2])
ports, candidates = [], random.sample(range(lo, hi), min(2000, hi - lo))
for p in candidates:
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", p))
            s.close()
    except OSError:
        continue
    ports.append(p)
    if len(ports) == 15:
        break
print(" ".join(map(str, ports)))
EOF
)"
((${#PORTS[@]} == 15)) || die "could not find 15 free ports in $PORT_MIN-$PORT_MAX"
IPERF_BACKEND=${PORTS[0]}
WEIR_METRICS=${PORTS[1]}
# nginx listens on one port per forwarder (and one for the direct baseline): a test's tens of thousands of
# TIME_WAIT sockets then never share a 4-tuple with the next test's connections, which would slow it down.
declare -A HTTP_BACKEND=([weir]=${PORTS[2]} [haproxy]=${PORTS[3]} [socat]=${PORTS[4]} [direct]=${PORTS[5]} [haproxy-splice]=${PORTS[12]})
declare -A IPERF_PORT=([weir]=${PORTS[6]} [haproxy]=${PORTS[8]} [socat]=${PORTS[10]} [direct]=$IPERF_BACKEND [haproxy-splice]=${PORTS[13]})
declare -A HTTP_PORT=([weir]=${PORTS[7]} [haproxy]=${PORTS[9]} [socat]=${PORTS[11]} [direct]=${HTTP_BACKEND[direct]} [haproxy-splice]=${PORTS[14]})

listening() { ss -Htln "sport = :$1" 2>/dev/null | grep -q "127.0.0.1:$1"; }

wait_listening() {      # wait_listening NAME PORT... ; waits up to 15 s for the process to listen on every port
    local name=$1 port i; shift
    for port in "$@"; do
        for ((i = 0; i < 150; i++)); do
            listening "$port" && break
            alive "$name" || { show_log "$name"; return 1; }
            sleep 0.1
        done
        listening "$port" || { log "$name does not listen on 127.0.0.1:$port"; show_log "$name"; return 1; }
    done
}

# ---------------------------------------------------------------------------------------------------------
# Backends: nginx answering "ok" to everything (no file access), and a fresh one-off iperf3 server per test.
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_timeout 0;
    server {
        listen 127.0.0.1:${HTTP_BACKEND[weir]} backlog=4096;
        listen 127.0.0.1:${HTTP_BACKEND[haproxy]} backlog=4096;
        listen 127.0.0.1:${HTTP_BACKEND[socat]} backlog=4096;
        listen 127.0.0.1:${HTTP_BACKEND[direct]} backlog=4096;
        listen 127.0.0.1:${HTTP_BACKEND[haproxy-splice]} backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF

cat >"$TMP/weir.yaml" <<EOF
agent:
  shutdown_grace: 1s
  state_dir: $TMP/weir-state
metrics:
  listen: 127.0.0.1:$WEIR_METRICS
log:
  level: warning
include: []
pipelines:
  iperf:
    stages:
      - type: listen.tcp
        address: 127.0.0.1:${IPERF_PORT[weir]}
      - type: connect.tcp
        addresses: [127.0.0.1:$IPERF_BACKEND]
  http:
    stages:
      - type: listen.tcp
        address: 127.0.0.1:${HTTP_PORT[weir]}
      - type: connect.tcp
        addresses: [127.0.0.1:${HTTP_BACKEND[weir]}]
EOF

cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend iperf
    bind 127.0.0.1:${IPERF_PORT[haproxy]}
    default_backend iperf
backend iperf
    server s1 127.0.0.1:$IPERF_BACKEND
frontend http
    bind 127.0.0.1:${HTTP_PORT[haproxy]}
    default_backend http
backend http
    server s1 127.0.0.1:${HTTP_BACKEND[haproxy]}
EOF

# The same with HAProxy's best mode for bulk data: splice(2) between the sockets when it pays (splice-auto).
sed -e "s/:${IPERF_PORT[haproxy]}\$/:${IPERF_PORT[haproxy-splice]}/" -e "s/:${HTTP_PORT[haproxy]}\$/:${HTTP_PORT[haproxy-splice]}/" \
    -e "s/:${HTTP_BACKEND[haproxy]}\$/:${HTTP_BACKEND[haproxy-splice]}/" -e "s/^    mode tcp$/    mode tcp\n    option splice-auto/" \
    "$TMP/haproxy.cfg" >"$TMP/haproxy-splice.cfg"

log "ports: iperf3 backend $IPERF_BACKEND, nginx ${HTTP_BACKEND[*]}, weir ${IPERF_PORT[weir]}/${HTTP_PORT[weir]} (metrics $WEIR_METRICS), haproxy ${IPERF_PORT[haproxy]}/${HTTP_PORT[haproxy]}, socat ${IPERF_PORT[socat]}/${HTTP_PORT[socat]}"

"$NGINX" -t -q -c "$TMP/nginx.conf" -e "$TMP/nginx/error.log" >&2 || die "nginx rejects the generated config"
start_proc nginx "$NGINX" -c "$TMP/nginx.conf" -e "$TMP/nginx/error.log"
wait_listening nginx "${HTTP_BACKEND[@]}" || die "nginx did not start"

"$WEIR_BIN" validate --config "$TMP/weir.yaml" >&2 || die "weir rejects the generated config"
haproxy -c -q -f "$TMP/haproxy.cfg" >&2 || die "haproxy rejects the generated config"
haproxy -c -q -f "$TMP/haproxy-splice.cfg" >&2 || die "haproxy rejects the generated splice config"

start_proc weir "$WEIR_BIN" agent --config "$TMP/weir.yaml"
start_proc haproxy haproxy -db -f "$TMP/haproxy.cfg"
start_proc haproxy-splice haproxy -db -f "$TMP/haproxy-splice.cfg"
start_proc socat-iperf socat "TCP-LISTEN:${IPERF_PORT[socat]},bind=127.0.0.1,fork,reuseaddr" "TCP:127.0.0.1:$IPERF_BACKEND"
start_proc socat-http socat "TCP-LISTEN:${HTTP_PORT[socat]},bind=127.0.0.1,fork,reuseaddr" "TCP:127.0.0.1:${HTTP_BACKEND[socat]}"

for ((i = 0; i < 150; i++)); do
    curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$WEIR_METRICS/healthz" 2>/dev/null && break
    alive weir || break
    sleep 0.1
done
curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$WEIR_METRICS/healthz" || { show_log weir; die "weir did not become healthy"; }
wait_listening weir "${IPERF_PORT[weir]}" "${HTTP_PORT[weir]}" || die "weir does not listen"
wait_listening haproxy "${IPERF_PORT[haproxy]}" "${HTTP_PORT[haproxy]}" || die "haproxy did not start"
wait_listening haproxy-splice "${IPERF_PORT[haproxy-splice]}" "${HTTP_PORT[haproxy-splice]}" || die "haproxy (splice) did not start"
wait_listening socat-iperf "${IPERF_PORT[socat]}" || die "socat did not start"
wait_listening socat-http "${HTTP_PORT[socat]}" || die "socat did not start"

# Processes whose memory and CPU are reported per forwarder.
declare -A PROCS=([weir]="weir" [haproxy]="haproxy" [haproxy-splice]="haproxy-splice" [socat]="socat-iperf socat-http")

proc_status() {         # proc_status PID FIELD -> value in kB
    local v
    v=$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || true)
    echo "${v:-0}"
}
proc_cpu_ticks() {      # user+system time of the process and its waited-for children, in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

fw_cpu_ticks() {         # fw_cpu_ticks FW ; CPU time of the forwarder's processes so far (0 for the direct baseline)
    local p t=0
    for p in ${PROCS[$1]:-}; do t=$((t + $(proc_cpu_ticks "${PIDS[$p]}"))); done
    echo "$t"
}
TICKS=$(getconf CLK_TCK)

declare -A RSS_START=()
for fw in "${FORWARDERS[@]}"; do
    total=0
    for p in ${PROCS[$fw]}; do total=$((total + $(proc_status "${PIDS[$p]}" VmRSS))); done
    RSS_START[$fw]=$total
done

# Smoke test: every forwarder must pass an HTTP request to nginx before it is measured.
declare -A BROKEN=()
for fw in "${FORWARDERS[@]}"; do
    body=$(curl -fsS -m 5 "http://127.0.0.1:${HTTP_PORT[$fw]}/" 2>&1) || true
    if [[ "$body" != ok ]]; then
        fail "$fw does not forward an HTTP request (curl: $body)"
        BROKEN[$fw]=1
    fi
done

check_alive() {         # check_alive FORWARDER ; notes a forwarder that died
    local p
    for p in ${PROCS[$1]:-}; do
        if [[ -z "${BROKEN[$1]:-}" ]] && ! alive "$p"; then
            fail "$p died (see bench/results/logs/$p.log)"; show_log "$p"; BROKEN[$1]=1
        fi
    done
}

# Client connections the forwarder still holds (established, or closed by the client but not by the
# forwarder) once a test's clients are gone. A forwarder that stalls connections shows up here even when
# the load generator (wrk) reports no error.
declare -A STUCK=()
held_conns() {
    ss -Htn "( sport = :${IPERF_PORT[$1]} or sport = :${HTTP_PORT[$1]} )" 2>/dev/null |
        awk '$1 == "ESTAB" || $1 == "CLOSE-WAIT"' | wc -l
}
check_stuck() {         # check_stuck FW METRIC ; waits up to 3 s for the test's connections to be closed
    local fw=$1 metric=$2 n i
    [[ "$fw" == direct ]] && return 0
    for ((i = 0; i < 15; i++)); do
        n=$(held_conns "$fw")
        ((n <= ${STUCK[$fw]:-0})) && return 0
        sleep 0.2
    done
    fail "$fw: $((n - ${STUCK[$fw]:-0})) client connections still open (ESTAB/CLOSE-WAIT on the forwarder) 3 s after the $metric test of round $ROUND ended"
    STUCK[$fw]=$n
}

# ---------------------------------------------------------------------------------------------------------
# Measurements, metric by metric across the forwarders, so that drift in the machine's state hits all alike.
declare -A RESULT=()     # "$fw:$metric" -> the values of all rounds, space-separated

iperf_run() {           # iperf_run FW METRIC STREAMS [-R]
    local fw=$1 metric=$2 streams=$3 reverse=${4:-} port=${IPERF_PORT[$1]} json out rc=0
    json="$TMP/iperf-$fw-$metric-$ROUND.json"
    local cpu0 cpu1
    start_proc iperf3-server iperf3 -s -1 -B 127.0.0.1 -p "$IPERF_BACKEND"
    if ! wait_listening iperf3-server "$IPERF_BACKEND"; then
        fail "iperf3 server did not start for $fw $metric"; stop_proc iperf3-server 1 || true; return 0
    fi
    cpu0=$(fw_cpu_ticks "$fw")
    # shellcheck disable=SC2086
    timeout $((IPERF_SECONDS + 15)) iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_SECONDS" -P "$streams" $reverse -J \
        >"$json" 2>"$TMP/iperf-$fw-$metric-$ROUND.log" || rc=$?
    cpu1=$(fw_cpu_ticks "$fw")
    out=$(python3 - "$json" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("ERR cannot parse iperf3 output: %s" % e); sys.exit()
if d.get("error"):
    print("ERR " + d["error"]); sys.exit()
bps = d.get("end", {}).get("sum_received", {}).get("bits_per_second")
print("ERR no end.sum_received in iperf3 output" if not bps else "%.6f" % (bps / 1e9))
EOF
)
    stop_proc iperf3-server 2 || true
    if [[ $rc -ne 0 || "$out" == ERR* ]]; then
        fail "round $ROUND: iperf3 $metric through $fw (exit $rc): ${out#ERR }"
    else
        RESULT[$fw:$metric]+=" $out"
        # CPU seconds the forwarder spent per GB forwarded (the test's bytes: Gbit/s x seconds / 8).
        RESULT[$fw:${metric}cpu]+=" $(awk -v t=$((cpu1 - cpu0)) -v hz="$TICKS" -v g="$out" -v s="$IPERF_SECONDS" 'BEGIN { printf "%.6f", (t / hz) / (g * s / 8) }')"
        log "round $ROUND: $fw $metric: $(printf '%.2f' "$out") Gbit/s"
    fi
}

wrk_run() {             # wrk_run FW
    local fw=$1 port=${HTTP_PORT[$1]} out rc=0 rps reqs errs non2xx cpu0 cpu1
    cpu0=$(fw_cpu_ticks "$fw")
    out=$(timeout $((WRK_SECONDS + 15)) wrk -H 'Connection: close' -c "$CONNS" -t 2 -d "${WRK_SECONDS}s" \
        "http://127.0.0.1:$port/" 2>&1) || rc=$?
    cpu1=$(fw_cpu_ticks "$fw")
    printf '%s\n' "$out" >"$TMP/wrk-$fw-$ROUND.log"
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    reqs=$(awk '/ requests in / { print $1 }' <<<"$out")
    errs=$(grep -m1 'Socket errors:' <<<"$out" | sed 's/^ *//' || true)
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    if [[ $rc -ne 0 || -z "$rps" || "${reqs:-0}" == 0 ]]; then
        fail "round $ROUND: wrk through $fw (exit $rc): $(tail -n 3 <<<"$out" | tr '\n' ' ')"
        return 0
    fi
    RESULT[$fw:conn]+=" $rps"
    # CPU microseconds the forwarder spent per forwarded connection.
    RESULT[$fw:conncpu]+=" $(awk -v t=$((cpu1 - cpu0)) -v hz="$TICKS" -v n="$reqs" 'BEGIN { printf "%.3f", 1e6 * (t / hz) / n }')"
    log "round $ROUND: $fw conn/s: $rps"
    [[ -n "$errs" ]] && note "$fw, round $ROUND: wrk reported $errs ($reqs requests)"
    [[ -n "$non2xx" ]] && note "$fw, round $ROUND: wrk got $non2xx non-2xx/3xx responses ($reqs requests)"
    return 0
}

TARGETS=("${FORWARDERS[@]}")
[[ "$BASELINE" == 1 ]] && TARGETS+=(direct)
METRICS=(s1 sN)
[[ "$REVERSE" == 1 ]] && METRICS+=(s1R)

declare -A CPU_START=()
for fw in "${FORWARDERS[@]}"; do
    t=0
    for p in ${PROCS[$fw]}; do t=$((t + $(proc_cpu_ticks "${PIDS[$p]}"))); done
    CPU_START[$fw]=$t
done

cpu_counters() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9 }' /proc/stat; }
read -r CPU_TOTAL0 CPU_STEAL0 < <(cpu_counters)

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  # Each round starts with a different target, so no forwarder always runs first (or last).
  shift_by=$(((ROUND - 1) % ${#TARGETS[@]}))
  ORDER=("${TARGETS[@]:shift_by}" "${TARGETS[@]:0:shift_by}")
  log "round $ROUND of $ROUNDS: ${ORDER[*]}"
  for metric in "${METRICS[@]}" conn; do
    for fw in "${ORDER[@]}"; do
        [[ -n "${BROKEN[$fw]:-}" ]] && continue
        case $metric in
            s1) iperf_run "$fw" s1 1 ;;
            sN) iperf_run "$fw" sN "$STREAMS" ;;
            s1R) iperf_run "$fw" s1R 1 -R ;;
            conn) wrk_run "$fw" ;;
        esac
        check_alive "$fw"
        check_stuck "$fw" "$metric"
        sleep 1
    done
  done
done
read -r CPU_TOTAL1 CPU_STEAL1 < <(cpu_counters)
STEAL_PCT=$(awk -v t=$((CPU_TOTAL1 - CPU_TOTAL0)) -v s=$((CPU_STEAL1 - CPU_STEAL0)) 'BEGIN { printf "%.0f", (t > 0 ? 100 * s / t : 0) }')

# Memory and CPU, read while the forwarders are still running.
declare -A HWM=() RSS_END=() CPU=()
for fw in "${FORWARDERS[@]}"; do
    hwm=0 rss=0 t=0 ok=1
    for p in ${PROCS[$fw]}; do
        alive "$p" || { ok=0; continue; }
        hwm=$((hwm + $(proc_status "${PIDS[$p]}" VmHWM)))
        rss=$((rss + $(proc_status "${PIDS[$p]}" VmRSS)))
        t=$((t + $(proc_cpu_ticks "${PIDS[$p]}")))
    done
    if ((ok)); then
        HWM[$fw]=$hwm RSS_END[$fw]=$rss
        CPU[$fw]=$(awk -v a="$t" -v b="${CPU_START[$fw]}" -v hz="$TICKS" 'BEGIN { printf "%.1f", (a - b) / hz }')
    fi
done

# weir's own view of its open connections: every client is gone, so this should be 0.
if alive weir; then
    active=$(curl -fsS -m 2 "http://127.0.0.1:$WEIR_METRICS/metrics" 2>/dev/null |
        awk '/^weir_pipeline_connections_active/ { s += $2 } END { printf "%d", s }') || active=""
    [[ -n "$active" && "$active" != 0 ]] && note "weir: weir_pipeline_connections_active = $active after all clients are gone"
fi

# Stop the forwarders; weir should be gone within its 1 s shutdown grace.
for fw in "${FORWARDERS[@]}"; do
    for p in ${PROCS[$fw]}; do
        t0=$(date +%s.%N)
        if ! stop_proc "$p" 10; then
            fail "$p did not exit within 10 s of SIGTERM (killed)"
        fi
        t1=$(date +%s.%N)
        took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
        awk -v t="$took" 'BEGIN { exit !(t > 3) }' && note "$p took ${took}s to exit after SIGTERM"
    done
done
stop_proc nginx 5 || true
if grep -qiE 'error|fatal|critical|panic' "$TMP/weir.log" 2>/dev/null; then
    note "weir logged errors: $(grep -iE 'error|fatal|critical|panic' "$TMP/weir.log" | sort | uniq -c | sort -rn | head -n 3 | tr -s ' ' | tr '\n' ';')"
fi

# ---------------------------------------------------------------------------------------------------------
# Report.
median() {              # median of space-separated numbers; empty when there are none
    tr ' ' '\n' <<<"${1:-}" | grep . | sort -g |
        awk '{ a[NR] = $1 } END { if (NR) printf "%.6f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
declare -A MED=()
for key in "${!RESULT[@]}"; do MED[$key]=$(median "${RESULT[$key]}"); done

fmt_gbit() { [[ -n "${1:-}" ]] && printf '%.2f' "$1" || printf 'n/a'; }
fmt_int() { [[ -n "${1:-}" ]] && printf '%.0f' "$1" || printf 'n/a'; }
fmt_mib() { [[ -n "${1:-}" ]] && awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }' || printf 'n/a'; }
fmt_all() {             # fmt_all VALUES DECIMALS -> "a / b / c"
    local v out=""
    for v in ${1:-}; do out+="${out:+ / }$(printf "%.${2}f" "$v")"; done
    printf '%s' "${out:-n/a}"
}
ratio() {
    if [[ -n "${1:-}" && -n "${2:-}" ]] && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'
    else
        printf 'n/a'
    fi
}
declare -A LABEL=([s1]="1 stream" [sN]="$STREAMS streams" [s1R]="1 stream reverse" [conn]="conn/s")

ELAPSED=$(($(date +%s) - START_TIME))
{
    echo "## Plain TCP forwarding on loopback: weir vs HAProxy vs socat"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), $(nproc) CPUs, kernel $(uname -r);" \
        "weir $(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$REPO_DIR" && git diff --quiet HEAD -- Sources plugins Package.swift 2>/dev/null || echo '+dirty')," \
        "$(haproxy -v | head -n1 | awk '{ print "HAProxy " $3 }'), $(socat -V | awk '/socat version/ { print "socat " $3; exit }'), $(iperf3 --version | head -n1 | awk '{ print "iperf3 " $2 }'), wrk + nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||')."
    echo "iperf3 ${IPERF_SECONDS}s per test; wrk -c $CONNS -t 2 -d ${WRK_SECONDS}s with \`Connection: close\` (requests/s = new TCP connections/s)." \
        "Median of $ROUNDS rounds; peak RSS = VmHWM after all rounds."
    echo
    header="| forwarder | 1-stream Gbit/s | vs HAProxy | $STREAMS-stream Gbit/s | vs HAProxy | new conn/s | vs HAProxy | CPU µs/conn | CPU s/GB (1 stream, $STREAMS streams) | peak RSS MiB |"
    sep="|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if [[ "$REVERSE" == 1 ]]; then header+=" 1-stream reverse Gbit/s |"; sep+="---:|"; fi
    echo "$header"
    echo "$sep"
    for fw in "${FORWARDERS[@]}"; do
        row="| $fw | $(fmt_gbit "${MED[$fw:s1]:-}") | $(ratio "${MED[$fw:s1]:-}" "${MED[haproxy:s1]:-}")"
        row+=" | $(fmt_gbit "${MED[$fw:sN]:-}") | $(ratio "${MED[$fw:sN]:-}" "${MED[haproxy:sN]:-}")"
        row+=" | $(fmt_int "${MED[$fw:conn]:-}") | $(ratio "${MED[$fw:conn]:-}" "${MED[haproxy:conn]:-}")"
        row+=" | $(fmt_int "${MED[$fw:conncpu]:-}") | $(fmt_gbit "${MED[$fw:s1cpu]:-}"), $(fmt_gbit "${MED[$fw:sNcpu]:-}")"
        row+=" | $(fmt_mib "${HWM[$fw]:-}") |"
        [[ "$REVERSE" == 1 ]] && row+=" $(fmt_gbit "${MED[$fw:s1R]:-}") |"
        echo "$row"
    done
    echo
    if [[ "$BASELINE" == 1 ]]; then
        line="- Baseline without a forwarder: 1 stream $(fmt_gbit "${MED[direct:s1]:-}") Gbit/s, $STREAMS streams $(fmt_gbit "${MED[direct:sN]:-}") Gbit/s"
        [[ "$REVERSE" == 1 ]] && line+=", 1 stream reverse $(fmt_gbit "${MED[direct:s1R]:-}") Gbit/s"
        echo "$line, $(fmt_int "${MED[direct:conn]:-}") conn/s."
    fi
    for fw in "${TARGETS[@]}"; do
        line="- Rounds, $fw:"
        for metric in "${METRICS[@]}" conn; do
            [[ $metric == conn ]] && d=0 || d=2
            line+=" ${LABEL[$metric]} $(fmt_all "${RESULT[$fw:$metric]:-}" $d);"
        done
        echo "${line%;}."
    done
    for fw in "${FORWARDERS[@]}"; do
        echo "- $fw: RSS $(fmt_mib "${RSS_START[$fw]:-}") MiB before the tests, $(fmt_mib "${RSS_END[$fw]:-}") MiB after; CPU time during the tests ${CPU[$fw]:-n/a} s."
    done
    echo "- haproxy-splice is the same HAProxy with \`option splice-auto\` (splice(2) between the sockets when it pays); CPU µs/conn and s/GB are the forwarder's own CPU time (user + system) per forwarded connection and per GB forwarded."
    echo "- socat forks a process per connection: its RSS is that of the two listening parents only; its CPU time includes the reaped children."
    echo "- Client, backends and forwarder share the machine's $(nproc) CPUs, so absolute numbers are lower than on separate hosts; compare ratios."
    if ((STEAL_PCT >= 5)); then
        echo "- The hypervisor stole ${STEAL_PCT}% of the CPU time during the tests: expect noisy numbers (look at the rounds)."
    else
        echo "- CPU steal by the hypervisor during the tests: ${STEAL_PCT}%."
    fi
    for n in "${NOTES[@]}"; do echo "- $n"; done
    echo "- Run took ${ELAPSED}s."
} >"$TMP/forward.md"

mkdir -p "$RESULTS_DIR"
cp "$TMP/forward.md" "$RESULTS_DIR/forward.md"
cat "$TMP/forward.md"
log "written to ${RESULTS_DIR#"$REPO_DIR"/}/forward.md (logs in ${RESULTS_DIR#"$REPO_DIR"/}/logs/)"

exit "$FAILED"
