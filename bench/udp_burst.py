"""The UDP session burst of udp-bench.sh: weir and nginx's stream proxy in front of one echo server."""
import os, select, socket, statistics, subprocess, sys, time

sys.path.insert(0, os.environ["BENCH_DIR"])
from harness import Metrics, free_ports, raise_descriptor_limit

weir_bin, tmp, nginx_stream, rounds, results = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
bursts = [int(b) for b in sys.argv[6:]]
raise_descriptor_limit()
metrics_port, echo_port, weir_port, nginx_port, tuned_port = free_ports(5)
# Sessions end after this much silence in both forwarders, and a round waits that long before the next one, so
# every burst opens fresh sessions into an empty table.
IDLE = 3

# The echo server: one socket, a receive buffer as large as the system allows, in a process of its own.
echo = subprocess.Popen([sys.executable, "-c", f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 1 << 26)  # SO_RCVBUFFORCE: as root, past net.core.rmem_max
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 26)
s.bind(("127.0.0.1", {echo_port}))
print("up", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""], stdout=subprocess.PIPE)
echo.stdout.readline()

def nginx_config(name, port, listen_options):
    """An operator's usual stream proxy: a worker per core, each with a socket of its own (reuseport)."""
    os.makedirs(f"{tmp}/{name}", exist_ok=True)
    with open(f"{tmp}/{name}.conf", "w") as f:
        f.write(f"""load_module {nginx_stream};
daemon off;
worker_processes auto;
worker_rlimit_nofile 20000;
pid {tmp}/{name}/nginx.pid;
error_log {tmp}/{name}/error.log error;
events {{ worker_connections 16384; }}
stream {{
    server {{
        listen 127.0.0.1:{port} udp reuseport{listen_options};
        proxy_pass 127.0.0.1:{echo_port};
        proxy_timeout {IDLE}s;
    }}
}}
""")
    return subprocess.Popen(["nginx", "-c", f"{tmp}/{name}.conf", "-e", f"{tmp}/{name}/error.log"], stderr=open(f"{tmp}/{name}.log", "w"))


nginx = nginx_config("nginx", nginx_port, "")
# Tuned for bursts as weir is by default: a 4 MiB receive buffer per socket.
tuned_nginx = nginx_config("nginx-tuned", tuned_port, " rcvbuf=4m")
with open(f"{tmp}/weir.yaml", "w") as f:
    f.write(f"""agent:
  shutdown_grace: 1s
  state_dir: {tmp}/weir-state
metrics:
  listen: 127.0.0.1:{metrics_port}
log:
  level: warning
include: []
pipelines:
  udp:
    stages:
      - type: listen.udp
        address: 127.0.0.1:{weir_port}
      - type: connect.udp
        addresses: [127.0.0.1:{echo_port}]
        idle_timeout: {IDLE}s
""")
weir = subprocess.Popen([weir_bin, "agent", "--config", f"{tmp}/weir.yaml"], stderr=open(f"{tmp}/weir.log", "w"))
Metrics(metrics_port).wait_up()
time.sleep(1)


def burst(port, count):
    """One datagram from each of `count` fresh sockets; (answered, sessions/s)."""
    clients = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        clients.append(s)
    poller = select.epoll()
    for s in clients:
        poller.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in clients}
    start = time.monotonic()
    for i, s in enumerate(clients):
        s.sendto(b"%08d" % i + b"x" * 40, ("127.0.0.1", port))
    answered, last = 0, start
    while True:
        events = poller.poll(2.0)
        if not events:
            break
        for fd, _ in events:
            try:
                while by_fd[fd].recv(2048):
                    answered += 1
                    last = time.monotonic()
            except BlockingIOError:
                pass
    poller.close()
    for s in clients:
        s.close()
    return answered, answered / max(last - start, 1e-6)


forwarders = {"weir": weir_port, "nginx": nginx_port, "nginx rcvbuf=4m": tuned_port}
tuned = "nginx rcvbuf=4m"


def cpu_seconds(pid):
    """Time on a CPU of a process's threads and its children's (nginx's workers), from schedstat (ns)."""
    pids = [pid] + [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    total = 0
    for p in pids:
        for task in os.listdir(f"/proc/{p}/task"):
            total += int(open(f"/proc/{p}/task/{task}/schedstat").read().split()[0])
    return total / 1e9


processes = {"weir": weir, "nginx": nginx, tuned: tuned_nginx}
# What each spends idle (weir's timers and sweeps), taken off the bursts' CPU time below.
start = {name: cpu_seconds(processes[name].pid) for name in forwarders}
time.sleep(5)
idle = {name: (cpu_seconds(processes[name].pid) - start[name]) / 5 for name in forwarders}
cpu = {name: 0.0 for name in forwarders}
sent = {name: 0 for name in forwarders}
readings = {(name, count): [] for name in forwarders for count in bursts}
try:
    for round in range(rounds):
        for count in bursts:
            # Alternate who goes first, so neither always meets a warmer machine.
            order = list(forwarders) if round % 2 == 0 else list(reversed(forwarders))
            for name in order:
                before, began = cpu_seconds(processes[name].pid), time.monotonic()
                answered, rate = burst(forwarders[name], count)
                sent[name] += count
                # Until its sessions have been closed: a session costs its opening, its datagrams and its end.
                time.sleep(IDLE + 1)
                cpu[name] += cpu_seconds(processes[name].pid) - before - idle[name] * (time.monotonic() - began)
                readings[(name, count)].append((answered, rate))
                print(f"round {round + 1}, burst {count}, {name}: {answered} answered, {rate:,.0f} sessions/s", file=sys.stderr, flush=True)
finally:
    for p in (weir, nginx, tuned_nginx, echo):
        p.terminate()
        p.wait()

median = lambda values: statistics.median(values)
with open(results, "w") as out:
    out.write(f"UDP session bursts ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, {rounds} rounds, medians;"
              f" nginx with a worker per core, reuseport, default and 4 MiB receive buffers):\n\n")
    others = [name for name in forwarders if name != "weir"]
    out.write("| burst | weir answered | " + " | ".join(f"{n} answered" for n in others) + " | weir sessions/s | "
              + " | ".join(f"{n} sessions/s" for n in others) + " | weir / " + " | weir / ".join(others) + " (sessions/s) |\n")
    out.write("|---:" * (2 + 2 * len(others) + 1 + len(others)) + "|\n")
    for count in bursts:
        answered = {name: median([a for a, _ in readings[(name, count)]]) for name in forwarders}
        rate = {name: median([r for _, r in readings[(name, count)]]) for name in forwarders}
        out.write(f"| {count} | {answered['weir']:.0f} | " + " | ".join(f"{answered[n]:.0f}" for n in others)
                  + f" | {rate['weir']:,.0f} | " + " | ".join(f"{rate[n]:,.0f}" for n in others) + " | "
                  + " | ".join(f"{rate['weir'] / max(rate[n], 1):.2f}x" for n in others) + " |\n")
    out.write("\nCPU time per client datagram sent, over all rounds, above each one's idle use (opening and closing its session, relaying it and the answer): "
              + ", ".join(f"{name} {1e6 * cpu[name] / max(sent[name], 1):.1f} µs" for name in forwarders)
              + " (nginx's counts datagrams it dropped unread, which cost it nothing).\n")
    out.write("\nRounds (answered): " + "; ".join(
        f"{name} {count}: {', '.join(str(a) for a, _ in readings[(name, count)])}" for count in bursts for name in forwarders) + "\n")
