#!/usr/bin/env bash
# Idle connections: what holding CONNECTIONS open connections through a plain TCP forward costs weir and HAProxy
# in memory (RSS before and with them open, per connection), each connection proven by one echoed byte and then
# left idle. 9,000 by default: each holds two of the forwarder's descriptors, and the hard RLIMIT_NOFILE on these
# machines is 20,000. Clients and the echo backend are processes of their own. Results: bench/results/idle.md.
set -euo pipefail
NAME=idle-bench
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
CONNECTIONS="${CONNECTIONS:-9000}"
TMP="$(mktemp -d)"
SECONDS_EACH=0
source "$REPO_DIR/bench/loopback-lib.sh"
loopback_init python3 haproxy
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$REPO_DIR/bench/results"

export BENCH_DIR="$REPO_DIR/bench"
python3 - "$WEIR_BIN" "$TMP" "$CONNECTIONS" "$REPO_DIR/bench/results/idle.md" <<'PY'
import os, subprocess, sys, time
sys.path.insert(0, os.environ["BENCH_DIR"])
from harness import RAISE_LIMIT, Metrics, echo_backend, free_ports, raise_descriptor_limit
weir, tmp, connections, results = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
raise_descriptor_limit()
backend_port, weir_port, haproxy_port, metrics_port = free_ports(4)
backend = echo_backend(backend_port)

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def hold(port):
    """A client process holding `connections` connections through `port`, each proven by an echoed byte."""
    herd = subprocess.Popen([sys.executable, "-c", RAISE_LIMIT + """
import socket, sys
conns = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30) for _ in range(int(sys.argv[2]))]
for c in conns: c.sendall(b"x")
print("ready %d" % sum(1 for c in conns if c.recv(1) == b"x"), flush=True)
sys.stdin.readline()
""", str(port), str(connections)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = herd.stdout.readline().strip()
    if ready != f"ready {connections}":
        sys.exit(f"idle-bench: the clients did not all connect through port {port}: {ready!r}")
    return herd

def measure(name, process, port):
    time.sleep(1)
    before = rss_kib(process.pid)
    herd = hold(port)
    time.sleep(2)
    loaded = rss_kib(process.pid)
    herd.stdin.write("quit\n"); herd.stdin.flush(); herd.wait(timeout=60)
    time.sleep(2)
    after = rss_kib(process.pid)
    return name, before, loaded, after

with open(f"{tmp}/weir.yaml", "w") as f:
    f.write(f"""agent: {{id: idle, state_dir: {tmp}/state}}
metrics: {{listen: 127.0.0.1:{metrics_port}}}
log: {{level: warning}}
pipelines:
  idle:
    stages:
      - {{type: listen.tcp, address: "127.0.0.1:{weir_port}", backlog: 8192}}
      - {{type: connect.tcp, addresses: ["127.0.0.1:{backend_port}"]}}
""")
with open(f"{tmp}/haproxy.cfg", "w") as f:
    f.write(f"""global
    maxconn {connections + 500}
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend idle
    bind 127.0.0.1:{haproxy_port}
    backlog 8192
    default_backend idle
backend idle
    server s1 127.0.0.1:{backend_port}
""")
rows = []
agent = subprocess.Popen([weir, "agent", "--config", f"{tmp}/weir.yaml"], stderr=open(f"{tmp}/agent.log", "w"))
haproxy = subprocess.Popen(["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"], stderr=open(f"{tmp}/haproxy.log", "w"))
try:
    Metrics(metrics_port).wait_up()
    rows.append(measure("weir", agent, weir_port))
    rows.append(measure("haproxy", haproxy, haproxy_port))
finally:
    for p in (agent, haproxy, backend):
        p.terminate()
        p.wait()

per = {name: (loaded - before) / connections for name, before, loaded, _ in rows}
lines = [f"{connections} idle connections through a plain TCP forward ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}):", "",
         "| forwarder | RSS MiB before | with the connections | after they closed | KiB per connection | vs HAProxy |",
         "|---|---:|---:|---:|---:|---:|"]
for name, before, loaded, after in rows:
    lines.append(f"| {name} | {before / 1024:.1f} | {loaded / 1024:.1f} | {after / 1024:.1f} | {per[name]:.2f} | {per[name] / max(per['haproxy'], 1e-9):.2f}x |")
print("\n".join(lines))
open(results, "w").write("\n".join(lines) + "\n")
PY
