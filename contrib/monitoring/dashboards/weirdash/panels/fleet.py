"""The coordinator's view of the fleet."""
from ..common import graph, single

COORDINATOR = 'job="weir-coordinator"'


def rows():
    return [("Fleet", [
        single("Agents online", f'sum(weir_coordinator_agents{{{COORDINATOR}, state="online"}})', width=6),
        single("Agents offline", f'sum(weir_coordinator_agents{{{COORDINATOR}, state="offline"}})', width=6),
        single("Bundles refused", f'sum(weir_coordinator_agent_bundles{{{COORDINATOR}, state="refused"}})', width=6),
        single("Bundles pending", f'sum(weir_coordinator_agent_bundles{{{COORDINATOR}, state="pending"}})', width=6),
        graph("Agents", [(f'sum by (state) (weir_coordinator_agents{{{COORDINATOR}}})', "{{state}}")]),
        graph("Bundles", [(f'sum by (state) (weir_coordinator_agent_bundles{{{COORDINATOR}}})', "{{state}}")]),
        graph("Pushes, ACKs and NACKs", [
            (f'sum(rate(weir_coordinator_pushes_total{{{COORDINATOR}}}[$__rate_interval]))', "pushes"),
            (f'sum(rate(weir_coordinator_acks_total{{{COORDINATOR}}}[$__rate_interval]))', "ACKs"),
            (f'sum(rate(weir_coordinator_nacks_total{{{COORDINATOR}}}[$__rate_interval]))', "NACKs"),
        ], unit="reqps"),
        graph("Push to ACK (p95)", [
            (f'histogram_quantile(0.95, sum by (le) (rate(weir_coordinator_push_latency_seconds_bucket{{{COORDINATOR}}}[$__rate_interval])))', "p95"),
        ], unit="s"),
        graph("Connected agents and live console pages, per instance", [
            (f'weir_coordinator_connected_agents{{{COORDINATOR}}}', "{{instance}} agents"),
            (f'weir_coordinator_console_live_streams{{{COORDINATOR}}}', "{{instance}} live pages"),
        ], width=24),
    ])]
