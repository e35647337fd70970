#!/usr/bin/env python3
"""Builds Weir's Grafana dashboards from the pieces in weirdash/panels (one module per row) with
grafana-foundation-sdk, into generated/*.json (committed, for Grafana's import).

    build.py              write generated/*.json
    build.py --check      exit 1 when generated/ differs from what the pieces build (a test runs this)
    build.py --queries    print every panel's queries as JSON: [{dashboard, panel, expr}]
    build.py --sources DIR...  with --check: every weir_* metric a query uses must be one Weir exports
"""
import argparse
import json
import pathlib
import re
import sys

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from weirdash.common import board
from weirdash.panels import agent_health, destinations, dns, fleet, nftables, per_ip, pipeline_traffic, relays, shaping, wireguard

HERE = pathlib.Path(__file__).resolve().parent
GENERATED = HERE / "generated"

DASHBOARDS = {
    "weir-fleet": lambda: board("weir-fleet", "Weir / Fleet", "The coordinator's view: agents online, bundles, pushes.",
                                fleet.rows(), agents=False),
    "weir-agent": lambda: board("weir-agent", "Weir / Agent", "One or more agents: health, reloads, pipelines' traffic.",
                                agent_health.rows() + pipeline_traffic.rows()),
    "weir-pipelines": lambda: board("weir-pipelines", "Weir / Pipelines and relays", "Traffic per pipeline and destination, relay peers, reverse tunnels.",
                                    pipeline_traffic.rows() + destinations.rows() + relays.rows()),
    "weir-per-ip": lambda: board("weir-per-ip", "Weir / Traffic per address", "count.ebpf: bytes and packets per client address.", per_ip.rows()),
    "weir-egress": lambda: board("weir-egress", "Weir / Egress gateway", "enforce.nftables: allowed, dropped, sets, domains.", nftables.rows()),
    "weir-shaping": lambda: board("weir-shaping", "Weir / Shaping", "shape.tc: classes, ceilings, drops.", shaping.rows()),
    "weir-vpn": lambda: board("weir-vpn", "Weir / VPN", "wireguard: peers, traffic, quotas, handshakes.", wireguard.rows()),
    "weir-dns": lambda: board("weir-dns", "Weir / DNS", "dns.filter: answers, upstreams, cache, rules.", dns.rows()),
}


def render(name):
    """The dashboard's JSON text, stable from run to run."""
    return json.dumps(DASHBOARDS[name]().build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def queries(name, text):
    result = []
    for panel in json.loads(text).get("panels", []):
        for target in panel.get("targets", []):
            result.append({"dashboard": name, "panel": panel.get("title", ""), "expr": target["expr"]})
    return result


def exported_metrics(directories):
    names = set()
    for directory in directories:
        for path in pathlib.Path(directory).rglob("*.swift"):
            names.update(re.findall(r'"(weir_[a-z0-9_]+)"', path.read_text(errors="replace")))
    return names


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--queries", action="store_true")
    parser.add_argument("--sources", nargs="*")
    args = parser.parse_args()
    built = {name: render(name) for name in DASHBOARDS}
    if args.queries:
        print(json.dumps([q for name, text in built.items() for q in queries(name, text)], indent=1))
        return 0
    if not args.check:
        GENERATED.mkdir(exist_ok=True)
        for stale in GENERATED.glob("*.json"):
            if stale.stem not in built:
                stale.unlink()
        for name, text in built.items():
            (GENERATED / f"{name}.json").write_text(text)
        print(f"wrote {len(built)} dashboards to {GENERATED}")
        return 0
    problems = []
    for name, text in built.items():
        path = GENERATED / f"{name}.json"
        if not path.exists() or path.read_text() != text:
            problems.append(f"{path.name} differs from what the pieces build: run contrib/monitoring/dashboards/build.py and commit")
    extra = sorted(p.name for p in GENERATED.glob("*.json") if p.stem not in built)
    problems += [f"{name} is built by no piece" for name in extra]
    if args.sources:
        exported = exported_metrics(args.sources) | {"up"}
        for name, text in built.items():
            for query in queries(name, text):
                for metric in re.findall(r"\b(weir_[a-z0-9_]+)", query["expr"]):
                    if metric not in exported and re.sub(r"_(bucket|sum|count)$", "", metric) not in exported:
                        problems.append(f"{name} / {query['panel']}: {metric} is not a metric Weir exports")
    if problems:
        print("\n".join(problems))
        return 1
    count = sum(len(queries(name, text)) for name, text in built.items())
    print(f"{len(built)} dashboards, {count} queries: generated/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
