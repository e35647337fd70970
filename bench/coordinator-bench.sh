#!/usr/bin/env bash
# Coordinator at fleet scale: N simulated agents (weir-fleet-sim, speaking the agent protocol over wss) on
# one coordinator (SQLite). Measures the time from one API change (an assignment for all of them) to the
# last ACK, and the coordinator's memory per connected agent. Results: bench/results/coordinator.md.
set -euo pipefail
NAME=coordinator-bench
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
AGENTS="${AGENTS:-1000}"
ROUNDS="${ROUNDS:-3}"
TMP="$(mktemp -d)"
SECONDS_EACH=0
mkdir -p "$REPO_DIR/bench/results"
source "$REPO_DIR/bench/loopback-lib.sh"
loopback_init openssl curl python3
SIM_BIN="${SIM_BIN:-$(dirname "$WEIR_BIN")/weir-fleet-sim}"
[ -x "$SIM_BIN" ] || { echo "$NAME: no $SIM_BIN (swift build -c release --product weir-fleet-sim)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$TMP/server.key" -out "$TMP/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$TMP/ext"
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial -days 2 \
    -extfile "$TMP/ext" -out "$TMP/server.pem" 2>/dev/null

PORT=$(free_port)
cat > "$TMP/coordinator.yaml" <<YAML
coordinator:
  listen: 127.0.0.1:$PORT
  state_dir: $TMP/state
  tls: { certificate: $TMP/server.pem, key: $TMP/server.key }
  heartbeat_interval: 10s
  offline_after: 30s
log: { level: warning }
YAML
"$WEIR_BIN" coordinator --config "$TMP/coordinator.yaml" > "$TMP/coordinator.log" 2>&1 &
COORDINATOR=$!
PIDS+=("$COORDINATOR")
wait_port "$PORT"
for _ in $(seq 100); do [ -s "$TMP/state/admin.token" ] && break; sleep 0.05; done
TOKEN=$(cat "$TMP/state/admin.token")
api() { curl -sf --cacert "$TMP/ca.pem" -H "Authorization: Bearer $TOKEN" "$@"; }
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }

api -X POST -d '{"labels":{"bench":"yes"}}' "https://localhost:$PORT/api/v1/enrollment-tokens" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' > "$TMP/enroll.token"
sleep 1
RSS_IDLE=$(rss_kib "$COORDINATOR")

"$SIM_BIN" --url "wss://localhost:$PORT" --ca "$TMP/ca.pem" --token-file "$TMP/enroll.token" --agents "$AGENTS" \
    > "$TMP/sim.out" 2> "$TMP/sim.err" &
PIDS+=("$!")
CONNECT_START=$(date +%s.%N)
for _ in $(seq 1200); do grep -q '^connected' "$TMP/sim.out" && break; sleep 0.1; done
grep -q '^connected' "$TMP/sim.out" || { echo "$NAME: the simulated agents did not connect" >&2; tail "$TMP/sim.err" >&2; exit 1; }
CONNECTED_AT=$(awk '/^connected/ { print $4 }' "$TMP/sim.out")
sleep 2
RSS_CONNECTED=$(rss_kib "$COORDINATOR")

results=()
for round in $(seq "$ROUNDS"); do
    # A new document assigned to every simulated agent: one API change, N new bundles.
    printf 'pipelines:\n  bench-%s:\n    stages:\n      - type: listen.tcp\n        address: 127.0.0.1:0\n      - type: connect.tcp\n        addresses: [127.0.0.1:9]\n' "$round" > "$TMP/doc.yaml"
    api -X PUT -H 'Content-Type: application/yaml' --data-binary @"$TMP/doc.yaml" "https://localhost:$PORT/api/v1/pipelines/bench-$round" > /dev/null
    ACKS_BEFORE=$(grep -c '^acked' "$TMP/sim.out" || true)
    START=$(date +%s.%N)
    api -X POST -d "{\"pipeline\":\"bench-$round\",\"selector\":\"bench=yes\"}" "https://localhost:$PORT/api/v1/assignments" > /dev/null
    for _ in $(seq 600); do [ "$(grep -c '^acked' "$TMP/sim.out" || true)" -gt "$ACKS_BEFORE" ] && break; sleep 0.05; done
    DONE=$(grep '^acked' "$TMP/sim.out" | tail -1 | awk '{ print $6 }')
    [ -n "$DONE" ] && [ "$(grep -c '^acked' "$TMP/sim.out")" -gt "$ACKS_BEFORE" ] || { echo "$NAME: round $round: not all agents ACKed" >&2; exit 1; }
    results+=("$(python3 -c "print(f'{$DONE - $START:.3f}')")")
    echo "round $round: all $AGENTS ACKs $(python3 -c "print(f'{$DONE - $START:.3f}')") s after the API call" >&2
done

# The web console with the whole fleet connected: sign in (the first admin's password from its file), then
# time each page (curl's time_total: TLS, request, server rendering, transfer), 20 loads each.
CONSOLE_PASSWORD=$(sed -n 2p "$TMP/state/console-admin.password")
console() { curl -s --cacert "$TMP/ca.pem" -b "$TMP/cookies" -c "$TMP/cookies" "$@"; }
SIGNIN_TOKEN=$(console "https://localhost:$PORT/login" | sed -n 's/.*name="token" value="\([^"]*\)".*/\1/p')
console -o /dev/null -H "Origin: https://localhost:$PORT" --data-urlencode "token=$SIGNIN_TOKEN" --data-urlencode "name=admin" \
    --data-urlencode "password=$CONSOLE_PASSWORD" "https://localhost:$PORT/login"
page_times=()
for page in "/" "/?page=10" "/?label=bench%3Dyes&status=online" "/pipelines/bench-1" "/relays" "/vpn" "/traffic" "/lists" "/audit"; do
    times=$(for _ in $(seq 20); do console -o /dev/null -w '%{http_code} %{time_total}\n' "https://localhost:$PORT$page"; done)
    echo "$times" | grep -qv '^200 ' && { echo "$NAME: console page $page did not answer 200" >&2; exit 1; }
    stats=$(echo "$times" | awk '{ print $2 * 1000 }' | sort -n | awk '{ a[NR] = $1 } END { printf "%.0f ms (p95 %.0f ms)", a[int((NR + 1) / 2)], a[int(NR * 0.95)] }')
    page_times+=("| console page \`$page\` with $AGENTS agents, median of 20 | $stats |")
    echo "console $page: $stats" >&2
done

MEDIAN=$(printf '%s\n' "${results[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
PER_AGENT=$(python3 -c "print(f'{($RSS_CONNECTED - $RSS_IDLE) / $AGENTS:.1f}')")
CONNECT_SECONDS=$(python3 -c "print(f'{$CONNECTED_AT - $CONNECT_START:.1f}')")
{
    echo "# Coordinator: $AGENTS simulated agents (weir-fleet-sim), SQLite, one instance"
    echo
    echo "| measure | value |"
    echo "|---|---|"
    echo "| API change (assignment to all) to the last ACK, median of $ROUNDS | ${MEDIAN} s (rounds: ${results[*]}) |"
    echo "| coordinator memory, idle → $AGENTS agents connected | $((RSS_IDLE / 1024)) MiB → $((RSS_CONNECTED / 1024)) MiB |"
    echo "| memory per connected agent | ${PER_AGENT} KiB |"
    echo "| enrolling and connecting $AGENTS agents (100 at a time) | ${CONNECT_SECONDS} s |"
    printf '%s\n' "${page_times[@]}"
} | tee "$REPO_DIR/bench/results/coordinator.md"
