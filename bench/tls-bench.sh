#!/usr/bin/env bash
# transform.tls benchmark: a TLS tunnel on loopback (plain TCP in, TLS between two hops, plain TCP out to
# iperf3), weir against stunnel4 with the same certificate, side by side; and weir's full relay
# (aead inside websocket inside tls, through connect.relay) for reference, with and without transform.mux:
# bulk throughput, and short connections per second (where a per-connection TLS handshake costs most).
#
#   bench/tls-bench.sh                        # builds weir (release, .build-bench/) and runs
#   WEIR_BIN=/path/to/weir bench/tls-bench.sh
#
# Environment (all optional):
#   BENCH_ROUNDS    iperf3 runs per setting; the median is reported (default 3)
#   BENCH_SECONDS   length of each run (default 5)
#
# Writes bench/results/tls.md. Exits non-zero only when something failed to run, never because of a number.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR="$BENCH_DIR/results"
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_EACH=${BENCH_SECONDS:-5}
TMP=$(mktemp -d /tmp/weir-tls-bench.XXXXXX)
NAME=tls-bench
# shellcheck source=bench/loopback-lib.sh
. "$BENCH_DIR/loopback-lib.sh"
STUNNEL=$(command -v stunnel4 || command -v stunnel || true)
[ -n "$STUNNEL" ] || { echo "tls-bench: needs stunnel4 (apt install stunnel4)" >&2; exit 1; }
loopback_init iperf3 openssl python3

# One ECDSA P-256 certificate for both tools, so both negotiate the same key exchange and cipher (TLS 1.3,
# AES-256-GCM is what both pick by default on this hardware).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=tunnel.bench \
    -addext subjectAltName=DNS:tunnel.bench -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

IPERF=$(free_port)
start iperf3 -s -B 127.0.0.1 -p "$IPERF"
wait_port "$IPERF"
direct=$(gbits "$IPERF")

echo "== stunnel4 (client mode -> server mode)" >&2
s_entry=$(free_port) s_exit=$(free_port)
cat > "$TMP/stunnel.conf" <<CONF
foreground = yes
pid =
debug = 3
[exit]
accept = 127.0.0.1:$s_exit
connect = 127.0.0.1:$IPERF
cert = $TMP/cert.pem
key = $TMP/key.pem
[entry]
client = yes
accept = 127.0.0.1:$s_entry
connect = 127.0.0.1:$s_exit
CAfile = $TMP/cert.pem
verifyChain = yes
checkHost = tunnel.bench
sni = tunnel.bench
CONF
start "$STUNNEL" "$TMP/stunnel.conf"
stunnel_pid=$LAST_PID
wait_port "$s_entry"
stunnel=$(gbits "$s_entry")
stop_pid "$stunnel_pid"

# A small echo service, and short connections through port $1: each connects, sends 64 bytes, reads them
# back and closes, one after another; prints connections per second (median of $ROUNDS runs of 300).
ECHO=$(free_port)
start python3 -c "
import socketserver
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data: return
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(('127.0.0.1', $ECHO), Echo).serve_forever()"
wait_port "$ECHO"
conn_rate() {
    local runs=()
    for _ in $(seq "$ROUNDS"); do
        runs+=("$(python3 -c "
import socket, time
start = time.monotonic()
for _ in range(300):
    s = socket.create_connection(('127.0.0.1', $1))
    s.sendall(b'x' * 64)
    got = b''
    while len(got) < 64:
        chunk = s.recv(64)
        if not chunk: raise SystemExit('connection closed early')
        got += chunk
    s.close()
print('%.0f' % (300 / (time.monotonic() - start)))")")
    done
    printf '%s\n' "${runs[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

echo "== weir (listen.tcp + transform.tls client -> listen.tcp + transform.tls server)" >&2
w_entry=$(free_port) w_exit=$(free_port)
config=$(weir_config tls "$w_entry" "$w_exit" "      - type: transform.tls
        side: client
        ca: $TMP/cert.pem
        server_name: tunnel.bench" "      - type: transform.tls
        side: server
        certificate: $TMP/cert.pem
        key: $TMP/key.pem" "      - type: connect.tcp
        addresses: [127.0.0.1:$w_exit]")
weir=$(run_weir "$config" "$w_entry")

relay_stages() {  # entry_or_exit mux(yes|no) target_port
    if [ "$1" = entry ]; then
        echo "      - type: transform.aead
        side: client
        cipher: aes-256-gcm
        password: bench
        target: 127.0.0.1:$3"
        [ "$2" = yes ] && echo "      - type: transform.mux
        side: client"
        echo "      - type: transform.websocket
        side: client
        host: tunnel.bench
        path: /relay
      - type: transform.tls
        side: client
        ca: $TMP/cert.pem
        server_name: tunnel.bench"
    else
        echo "      - type: transform.tls
        side: server
        certificate: $TMP/cert.pem
        key: $TMP/key.pem
      - type: transform.websocket
        side: server
        path: /relay"
        [ "$2" = yes ] && echo "      - type: transform.mux
        side: server"
        echo "      - type: transform.aead
        side: server
        cipher: aes-256-gcm
        password: bench"
    fi
}

echo "== weir relay (aead in websocket in tls, connect.relay)" >&2
r_entry=$(free_port) r_exit=$(free_port)
config=$(weir_config relay "$r_entry" "$r_exit" "$(relay_stages entry no "$IPERF")" "$(relay_stages exit no)" "      - type: connect.relay
        peers: [127.0.0.1:$r_exit]")
relay=$(run_weir "$config" "$r_entry")

echo "== weir relay with transform.mux (aead streams in one websocket-in-tls carrier)" >&2
m_entry=$(free_port) m_exit=$(free_port)
config=$(weir_config mux "$m_entry" "$m_exit" "$(relay_stages entry yes "$IPERF")" "$(relay_stages exit yes)" "      - type: connect.relay
        peers: [127.0.0.1:$m_exit]")
mux=$(run_weir "$config" "$m_entry")

echo "== short connections through the relay, without and with transform.mux" >&2
c_entry=$(free_port) c_exit=$(free_port)
config=$(weir_config rate "$c_entry" "$c_exit" "$(relay_stages entry no "$ECHO")" "$(relay_stages exit no)" "      - type: connect.relay
        peers: [127.0.0.1:$c_exit]" "$ECHO")
rate=$(run_weir "$config" "$c_entry" conn_rate)
c_entry=$(free_port) c_exit=$(free_port)
config=$(weir_config muxrate "$c_entry" "$c_exit" "$(relay_stages entry yes "$ECHO")" "$(relay_stages exit yes)" "      - type: connect.relay
        peers: [127.0.0.1:$c_exit]" "$ECHO")
mux_rate=$(run_weir "$config" "$c_entry" conn_rate)

mkdir -p "$RESULTS_DIR"
{
    echo "### transform.tls ($(date -u +%Y-%m-%d), $(nproc) CPUs)"
    echo
    echo "TLS tunnel on loopback (plain in, TLS 1.3 between two hops, plain out), iperf3 1 stream, median of $ROUNDS × ${SECONDS_EACH}s; without any tunnel: ${direct} Gbit/s."
    echo
    echo "| setup | Gbit/s | / stunnel4 |"
    echo "|---|---:|---:|"
    echo "| stunnel4 $("$STUNNEL" -version 2>&1 | awk '/^stunnel/ { print $2; exit }') (client -> server) | $stunnel | 1.00x |"
    echo "| weir transform.tls (client -> server) | $weir | $(ratio "$weir" "$stunnel") |"
    echo "| weir relay: aead-256-gcm in websocket in tls via connect.relay | $relay | $(ratio "$relay" "$stunnel") |"
    echo "| weir relay as above, aead streams multiplexed in one carrier (transform.mux) | $mux | $(ratio "$mux" "$stunnel") |"
    echo
    echo "Short connections through the relay (connect, 64 bytes echoed, close; one after another, median of $ROUNDS × 300):"
    echo
    echo "| relay | connections/s | / without mux |"
    echo "|---|---:|---:|"
    echo "| aead in websocket in tls, a TLS handshake per connection | $rate | 1.00x |"
    echo "| the same with transform.mux (one carrier) | $mux_rate | $(ratio "$mux_rate" "$rate") |"
} | tee "$RESULTS_DIR/tls.md"
