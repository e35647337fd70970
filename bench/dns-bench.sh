#!/usr/bin/env bash
# dns.filter side by side with the resolvers people run (unbound and dnsmasq, both forwarding with a cache)
# in one run, all on loopback in front of the same authoritative dnsmasq: dnsperf queries/s on cached
# answers; then a 1,000,000-entry blocklist — load time, memory per rule (RSS with the list minus without)
# and dnsperf queries/s on blocked names. Results: bench/results/dns.md.
set -euo pipefail
NAME=dns-bench
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_EACH="${SECONDS_EACH:-10}"
ROUNDS="${ROUNDS:-3}"
TMP="$(mktemp -d)"
source "$REPO_DIR/bench/loopback-lib.sh"
loopback_init dnsperf dnsmasq unbound python3 curl
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$REPO_DIR/bench/results"

python3 - "$WEIR_BIN" "$TMP" "$SECONDS_EACH" "$REPO_DIR/bench/results/dns.md" "$ROUNDS" <<'PY'
import os, re, statistics, subprocess, sys, time, urllib.request
sys.path.insert(0, os.path.join(os.path.dirname(sys.argv[4]), ".."))
from harness import free_ports, raise_descriptor_limit
weir, tmp, seconds, results, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
raise_descriptor_limit()
auth, w_port, m_port, u_port, metrics, w2_port, metrics2 = free_ports(7, start=21000)
processes = []

def start(arguments, **kwargs):
    p = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    processes.append(p)
    return p

names = [f"q{i}.example.test" for i in range(1000)]
start(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
       "--listen-address=127.0.0.1", f"--port={auth}", "--local-ttl=3600", "--user=root", "--group=root", f"--pid-file={tmp}/auth.pid"]
      + [f"--host-record={n},192.0.2.{i % 250 + 1}" for i, n in enumerate(names)])
start(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
       "--listen-address=127.0.0.1", f"--port={m_port}", f"--server=127.0.0.1#{auth}", "--cache-size=10000", "--user=root",
       "--group=root", f"--pid-file={tmp}/fwd.pid"])
threads = os.cpu_count() or 2
open(f"{tmp}/unbound.conf", "w").write(f"""server:
  interface: 127.0.0.1@{u_port}
  port: {u_port}
  do-daemonize: no
  username: ""
  chroot: ""
  pidfile: ""
  directory: "{tmp}"
  num-threads: {threads}
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  msg-cache-size: 64m
  rrset-cache-size: 128m
  use-syslog: no
  logfile: ""
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{auth}
""")
start(["unbound", "-d", "-c", f"{tmp}/unbound.conf"])

def agent(directory, port, metrics_port, lists=""):
    os.makedirs(f"{directory}/pipelines.d", exist_ok=True)
    open(f"{directory}/weir.yaml", "w").write(
        f"agent:\n  state_dir: {directory}\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\nlog:\n  level: warning\n")
    open(f"{directory}/pipelines.d/dns.yaml", "w").write(
        f"pipelines:\n  dns:\n    stages:\n      - type: dns.filter\n        listen: 127.0.0.1:{port}\n"
        f"        upstreams: [127.0.0.1:{auth}]\n        cache: {{size: 100000}}\n        max_inflight: 65536\n{lists}")
    started = time.monotonic()
    p = start([weir, "agent", "--config", f"{directory}/weir.yaml"])
    for _ in range(1200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=1).read()
            return p, time.monotonic() - started
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the agent did not start")

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def socket_drops(port):
    """Datagrams the kernel dropped at the sockets bound to `port` (their receive buffers were full)."""
    total = 0
    for line in open("/proc/net/udp").readlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            total += int(fields[-1])
    return total

def receive_buffer_errors():
    """Datagrams dropped at any socket of this machine because its receive buffer was full (Udp RcvbufErrors)."""
    lines = [line.split() for line in open("/proc/net/snmp") if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])

def dnsperf(port, query_file):
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", query_file, "-l", str(seconds), "-c", "16", "-T", str(threads), "-q", "2000"],
                         capture_output=True, text=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    return qps, lost

open(f"{tmp}/cached.txt", "w").write("".join(f"{n} A\n" for n in names))
plain, _ = agent(f"{tmp}/plain", w_port, metrics)
time.sleep(1)
for port in (w_port, m_port, u_port):  # warm every cache
    subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", f"{tmp}/cached.txt", "-n", "2"], capture_output=True)
# Rounds alternate the resolvers, so a slow moment of the machine does not fall on one of them; medians.
resolvers = [("weir dns.filter", w_port), ("unbound", u_port), ("dnsmasq", m_port)]
runs = {name: [] for name, _ in resolvers}
for _ in range(rounds):
    for name, port in resolvers:
        runs[name].append(dnsperf(port, f"{tmp}/cached.txt"))
cached = {name: (statistics.median(q for q, _ in results_), sum(lost for _, lost in results_)) for name, results_ in runs.items()}
base_rss = rss_kib(plain.pid)

# A million rules: hosts format, as the big published lists are.
with open(f"{tmp}/million.hosts", "w") as f:
    for i in range(1_000_000):
        f.write(f"0.0.0.0 ad{i}.tracker{i % 997}.example\n")
blocked, load = agent(f"{tmp}/blocked", w2_port, metrics2, f"        blocklists: [{tmp}/million.hosts]\n")
time.sleep(1)
per_rule = (rss_kib(blocked.pid) - base_rss) * 1024 / 1_000_000
open(f"{tmp}/blocked.txt", "w").write("".join(f"ad{i * 997}.tracker{(i * 997) % 997}.example A\n" for i in range(1000)))
blocked_qps, blocked_lost = dnsperf(w2_port, f"{tmp}/blocked.txt")

# The list reloaded twice (a rule added, SIGHUP) while dnsperf runs: the new rules are built aside while the
# old ones answer; every answer must still be NXDOMAIN and none lost beyond dnsperf's in-flight tail.
buffer_errors = receive_buffer_errors()
run = subprocess.Popen(["dnsperf", "-s", "127.0.0.1", "-p", str(w2_port), "-d", f"{tmp}/blocked.txt", "-l", str(seconds), "-c", "16",
                        "-T", str(threads), "-q", "2000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
for n in range(2):
    time.sleep(seconds / 3)
    with open(f"{tmp}/million.hosts", "a") as f:
        f.write(f"0.0.0.0 added{n}.example\n")
    os.kill(blocked.pid, 1)
out = run.communicate()[0]
# Lost queries are told apart by where they were dropped: at weir's sockets, or at dnsperf's (its receive
# buffers fill while the reload's compile takes the CPU from it on a small machine).
weir_drops = socket_drops(w2_port)
all_drops = receive_buffer_errors() - buffer_errors
reload_qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
reload_lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
codes = re.search(r"Response codes:\s+(.*)", out).group(1).strip()
for p in processes:
    p.terminate()

best = max(q for name, (q, _) in cached.items() if name != "weir dns.filter")
rounds_won = sum(1 for i in range(rounds) if runs["weir dns.filter"][i][0] >= max(runs[n][i][0] for n, _ in resolvers if n != "weir dns.filter"))
lines = [
    "## dns.filter (bench/dns-bench.sh)", "",
    f"dnsperf, 16 clients, {threads} threads, {seconds} s each, cached answers of 1,000 names (every resolver forwarding to one authoritative dnsmasq on loopback); "
    f"median of {rounds} alternating rounds:", "",
    "| resolver | queries/s (median) | rounds | lost (all rounds) | weir / it |", "|---|---|---|---|---|",
]
for name, (qps, lost) in cached.items():
    each = ", ".join(f"{q:,.0f}" for q, _ in runs[name])
    lines.append(f"| {name} | {qps:,.0f} | {each} | {lost} | {cached['weir dns.filter'][0] / qps:.2f} |")
lines += ["", f"1,000,000-rule hosts blocklist: agent start to healthy {load:.2f} s (the list read and compiled), "
          f"{per_rule:.1f} bytes of RSS per rule, blocked answers {blocked_qps:,.0f} queries/s ({blocked_lost} lost).",
          f"Two list reloads (SIGHUP, 1,000,000 rules rebuilt aside) during a {seconds} s run: {reload_qps:,.0f} queries/s, "
          f"{reload_lost} lost (without reloads: {blocked_lost}; dropped at weir's sockets: {weir_drops}, at dnsperf's: {all_drops - weir_drops}), response codes: {codes}.",
          f"weir / fastest other on cached answers: {cached['weir dns.filter'][0] / best:.2f} (medians; weir fastest in {rounds_won} of {rounds} rounds)", ""]
open(results, "w").write("\n".join(lines))
print("\n".join(lines))
PY
