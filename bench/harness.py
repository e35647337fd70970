"""What the Python-driven benchmarks (reload-bench.sh, soak.sh) share: the descriptor limit, free ports, an echo
backend in a process of its own, and reading the agent's metrics."""
import re, resource, socket, subprocess, sys, time, urllib.request

RAISE_LIMIT = "import resource\ns, h = resource.getrlimit(resource.RLIMIT_NOFILE)\nresource.setrlimit(resource.RLIMIT_NOFILE, (h, h))\n"


def raise_descriptor_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_ports(count, start=20000):
    """`count` ports free on 127.0.0.1 from `start` up (below the ephemeral range)."""
    ports, port = [], start
    while len(ports) < count:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            ports.append(port)
        except OSError:
            pass
        s.close()
        port += 1
    return ports


def echo_backend(port):
    """An asyncio echo server for any number of connections, in a process of its own; returns once it listens."""
    process = subprocess.Popen([sys.executable, "-c", RAISE_LIMIT + """
import asyncio, sys
async def echo(r, w):
    try:
        while data := await r.read(65536):
            w.write(data); await w.drain()
    except OSError:
        pass
    w.close()
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]), backlog=8192)
    print("up", flush=True); await server.serve_forever()
asyncio.run(main())
""", str(port)], stdout=subprocess.PIPE)
    process.stdout.readline()
    return process


class Metrics:
    """The agent's /metrics endpoint."""

    def __init__(self, port):
        self.url = f"http://127.0.0.1:{port}/metrics"

    def scrape(self):
        return urllib.request.urlopen(self.url, timeout=10).read().decode()

    def wait_up(self, seconds=30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                return self.scrape()
            except OSError:
                time.sleep(0.1)
        sys.exit("the agent did not start")

    @staticmethod
    def sample(text, name, labels=None):
        """A sample's value; with `labels` (the text between the braces) that exact series, else the first."""
        series = r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{[^}]*\})?"
        m = re.search(r"^" + re.escape(name) + series + r" ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    @staticmethod
    def total(text, name):
        """The sum of every series of `name`."""
        return sum(float(v) for v in re.findall(r"^" + re.escape(name) + r"\{[^}]*\} ([0-9.e+-]+)$", text, re.M))
