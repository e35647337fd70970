#!/usr/bin/env bash
# Reload at scale: PIPELINES forwards (listen.tcp -> connect.tcp, one port each) with CONNECTIONS open through
# the first ones; each round changes one pipeline and sends SIGHUP. Measures the time from the signal to the
# configuration applied (weir_config_reload_duration_seconds, recorded by the agent itself, and the wall time
# until the reload counter moves), and checks that no open connection was dropped. Results:
# bench/results/reload.md.
set -euo pipefail
NAME=reload-bench
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
PIPELINES="${PIPELINES:-1000}"
CONNECTIONS="${CONNECTIONS:-2000}"
ROUNDS="${ROUNDS:-7}"
TMP="$(mktemp -d)"
SECONDS_EACH=0
source "$REPO_DIR/bench/loopback-lib.sh"
loopback_init python3
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$REPO_DIR/bench/results"

rm -f "$REPO_DIR/bench/results/reload.md"
export BENCH_DIR="$REPO_DIR/bench"
for LAYOUT in one-file file-per-pipeline; do
python3 - "$WEIR_BIN" "$TMP/$LAYOUT" "$PIPELINES" "$CONNECTIONS" "$ROUNDS" "$REPO_DIR/bench/results/reload.md" "$LAYOUT" <<'PY'
import os, signal, socket, statistics, subprocess, sys, time
sys.path.insert(0, os.environ["BENCH_DIR"])
from harness import Metrics, echo_backend, free_ports, raise_descriptor_limit
weir, tmp, pipelines, connections, rounds, results, layout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
raise_descriptor_limit()
ports = free_ports(pipelines + 2)
metrics_port, backend_port, ports = ports[0], ports[1], ports[2:]
backend = echo_backend(backend_port)

def pipeline(i, port, changed):
    text = f"  p{i}:\n    stages:\n      - {{type: listen.tcp, address: \"127.0.0.1:{port}\"}}\n"
    if i == changed:
        text += f"      - {{type: limit.bandwidth, rate: {100 + i}MiB/s}}\n"
    return text + f"      - {{type: connect.tcp, addresses: [\"127.0.0.1:{backend_port}\"]}}\n"

written = {}
def write_pipelines(changed):
    # one-file: every pipeline in one drop-in; file-per-pipeline: a drop-in each (as coordinator bundles are).
    files = {"all.yaml": "pipelines:\n" + "".join(pipeline(i, port, changed) for i, port in enumerate(ports))} if layout == "one-file" else \
        {f"p{i}.yaml": "pipelines:\n" + pipeline(i, port, changed) for i, port in enumerate(ports)}
    for name, text in files.items():
        if written.get(name) != text:
            with open(f"{tmp}/pipelines.d/{name}", "w") as f:
                f.write(text)
            written[name] = text

os.makedirs(f"{tmp}/pipelines.d", exist_ok=True)
with open(f"{tmp}/weir.yaml", "w") as f:
    f.write(f"agent: {{id: bench, state_dir: {tmp}/state}}\nmetrics: {{listen: 127.0.0.1:{metrics_port}}}\nlog: {{level: warning}}\n")
write_pipelines(-1)
agent = subprocess.Popen([weir, "agent", "--config", f"{tmp}/weir.yaml"], stderr=open(f"{tmp}/agent.log", "w"))

metrics = Metrics(metrics_port)
metrics.wait_up()

# Connections through the first pipelines, which no reload changes.
held = []
for i in range(connections):
    c = socket.create_connection(("127.0.0.1", ports[i % 10]), timeout=10)
    held.append(c)
def echoing():
    for c in held: c.sendall(b"x")
    return sum(1 for c in held if c.recv(1) == b"x")
assert echoing() == connections

agent_ms, wall_ms = [], []
for r in range(rounds):
    write_pipelines(pipelines - 1 - r)
    before = metrics.scrape()
    count, total = Metrics.total(before, "weir_config_reloads_total"), Metrics.sample(before, "weir_config_reload_duration_seconds_sum")
    started = time.monotonic()
    agent.send_signal(signal.SIGHUP)
    while True:
        after = metrics.scrape()
        if Metrics.total(after, "weir_config_reloads_total") > count:
            break
        time.sleep(0.002)
    wall_ms.append((time.monotonic() - started) * 1000)
    agent_ms.append((Metrics.sample(after, "weir_config_reload_duration_seconds_sum") - total) * 1000)
    if Metrics.sample(after, "weir_config_reloads_total", 'result="failure"') > 0:
        sys.exit("reload-bench: a reload failed; see " + tmp + "/agent.log")

alive = echoing()
fds = len(os.listdir(f"/proc/{agent.pid}/fd"))
agent.send_signal(signal.SIGTERM); agent.wait(timeout=30); backend.kill()
lines = [] if os.path.exists(results) else [
    f"| layout | pipelines | open connections | agent descriptors | reload, agent's own timing (median of {rounds}) | SIGHUP to counter moved (median) | connections dropped |",
    "|---|---:|---:|---:|---:|---:|---:|",
]
lines.append(f"| {layout} | {pipelines} | {connections} | {fds} | {statistics.median(agent_ms):.1f} ms | {statistics.median(wall_ms):.1f} ms | {connections - alive} |")
print("\n".join(lines))
open(results, "a").write("\n".join(lines) + "\n")
if alive != connections:
    sys.exit(f"reload-bench: {connections - alive} connections were dropped")
PY
done
