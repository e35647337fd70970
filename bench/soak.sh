#!/usr/bin/env bash
# Soak: as many connections as the descriptor limit allows (CONNECTIONS, default 9,000: each holds two of the
# agent's descriptors, and the hard RLIMIT_NOFILE here is 20,000) held through one forward while the agent
# reloads every second for DURATION seconds, each reload changing another pipeline. Every few seconds every
# connection must echo a byte. Afterwards the agent's descriptors and active-connection gauge must be back
# to their baseline. Clients and the backend are processes of their own. Results: bench/results/soak.md.
set -euo pipefail
NAME=soak
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
CONNECTIONS="${CONNECTIONS:-9000}"
DURATION="${DURATION:-60}"
TMP="$(mktemp -d)"
SECONDS_EACH=0
source "$REPO_DIR/bench/loopback-lib.sh"
loopback_init python3
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$REPO_DIR/bench/results"

export BENCH_DIR="$REPO_DIR/bench"
python3 - "$WEIR_BIN" "$TMP" "$CONNECTIONS" "$DURATION" "$REPO_DIR/bench/results/soak.md" <<'PY'
import os, signal, socket, subprocess, sys, time
sys.path.insert(0, os.environ["BENCH_DIR"])
from harness import RAISE_LIMIT, Metrics, echo_backend, free_ports
weir, tmp, connections, duration, results = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
backend_port, port, spare_port, metrics_port = free_ports(4)
backend = echo_backend(backend_port)

os.makedirs(f"{tmp}/pipelines.d", exist_ok=True)
def write_pipelines(round):
    with open(f"{tmp}/pipelines.d/soak.yaml", "w") as f:
        f.write(f"""pipelines:
  soak:
    stages:
      - {{type: listen.tcp, address: "127.0.0.1:{port}", backlog: 8192}}
      - {{type: connect.tcp, addresses: ["127.0.0.1:{backend_port}"]}}
  spare:
    stages:
      - {{type: listen.tcp, address: "127.0.0.1:{spare_port}"}}
      - {{type: limit.bandwidth, rate: {100 + round % 2}MiB/s}}
      - {{type: connect.tcp, addresses: ["127.0.0.1:{backend_port}"]}}
""")
with open(f"{tmp}/weir.yaml", "w") as f:
    f.write(f"agent: {{id: soak, state_dir: {tmp}/state}}\nmetrics: {{listen: 127.0.0.1:{metrics_port}}}\nlog: {{level: warning}}\n")
write_pipelines(0)
agent = subprocess.Popen([weir, "agent", "--config", f"{tmp}/weir.yaml"], stderr=open(f"{tmp}/agent.log", "w"))

metrics = Metrics(metrics_port)
scrape, sample = metrics.scrape, Metrics.sample
def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1])
def fds(pid): return len(os.listdir(f"/proc/{pid}/fd"))

metrics.wait_up()
time.sleep(0.5)
base_fds, base_rss = fds(agent.pid), rss_kib(agent.pid)

herd = subprocess.Popen([sys.executable, "-c", RAISE_LIMIT + """
import socket, sys
host, port, count = "127.0.0.1", int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection((host, port), timeout=30) for _ in range(count)]
def check():
    for c in conns: c.sendall(b"x")
    return sum(1 for c in conns if c.recv(1) == b"x")
print("ready %d" % check(), flush=True)
for line in sys.stdin:
    if line.strip() == "check": print("ok %d" % check(), flush=True)
    else: break
for c in conns: c.close()
print("closed", flush=True)
""", str(port), str(connections)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
ready = herd.stdout.readline().strip()
if ready != f"ready {connections}":
    sys.exit(f"soak: the clients did not all connect: {ready!r}")
loaded_fds, loaded_rss = fds(agent.pid), rss_kib(agent.pid)

failures, reloads, checks, echoed_short = 0, 0, 0, 0
started = time.monotonic()
while time.monotonic() - started < duration:
    reloads += 1
    write_pipelines(reloads)
    before = sample(scrape(), "weir_config_reloads_total", 'result="success"')
    agent.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while sample(scrape(), "weir_config_reloads_total", 'result="success"') <= before:
        if time.monotonic() > deadline or agent.poll() is not None:
            sys.exit(f"soak: reload {reloads} did not complete; see {tmp}/agent.log")
        time.sleep(0.01)
    if reloads % 5 == 0:
        herd.stdin.write("check\n"); herd.stdin.flush()
        echoed = int(herd.stdout.readline().split()[1]); checks += 1
        echoed_short += connections - echoed
    time.sleep(max(0, reloads - (time.monotonic() - started)))
text = scrape()
failures = sample(text, "weir_config_reloads_total", 'result="failure"')
errors = Metrics.total(text, "weir_pipeline_errors_total")
active = sample(text, "weir_pipeline_connections_active", 'pipeline="soak"')
herd.stdin.write("quit\n"); herd.stdin.flush(); herd.stdout.readline(); herd.wait(timeout=60)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    after_active = sample(scrape(), "weir_pipeline_connections_active", 'pipeline="soak"')
    if after_active == 0 and fds(agent.pid) <= base_fds + 2: break
    time.sleep(0.2)
after_fds, after_rss = fds(agent.pid), rss_kib(agent.pid)
agent.send_signal(signal.SIGTERM); agent.wait(timeout=30); backend.kill()

per_conn = (loaded_rss - base_rss) / connections
lines = [
    f"| connections | reloads in {duration} s | echo checks | bytes not echoed | reload failures | pipeline errors | active during | descriptors baseline / loaded / after | RSS MiB baseline / loaded / after | KiB per connection |",
    "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    f"| {connections} | {reloads} | {checks} | {echoed_short} | {failures:.0f} | {errors:.0f} | {active:.0f} | {base_fds} / {loaded_fds} / {after_fds} | "
    f"{base_rss/1024:.1f} / {loaded_rss/1024:.1f} / {after_rss/1024:.1f} | {per_conn:.1f} |",
]
print("\n".join(lines))
open(results, "w").write("\n".join(lines) + "\n")
if echoed_short or failures or errors or active != connections or after_fds > base_fds + 2 or after_active != 0:
    sys.exit("soak: FAILED (see the row above)")
PY
