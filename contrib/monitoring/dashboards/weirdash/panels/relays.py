"""Relay chains: the next hop's health and latency, reverse tunnels."""
from ..common import PIPELINE, graph


def rows():
    return [("Relays", [
        graph("Next hop up", [(f'weir_relay_peer_up{{{PIPELINE}}}', "{{pipeline}} → {{peer}}")], width=8),
        graph("Next hop latency", [(f'weir_relay_latency_seconds{{{PIPELINE}}}', "{{pipeline}} → {{peer}}")], unit="s", width=8),
        graph("Failed connection attempts", [
            (f'sum by (pipeline, peer) (rate(weir_relay_connect_failures_total{{{PIPELINE}}}[$__rate_interval]))', "{{pipeline}} → {{peer}}"),
        ], unit="reqps", width=8),
        graph("Reverse tunnels open", [(f'weir_reverse_tunnels_open{{{PIPELINE}}}', "{{pipeline}}")], width=12),
        graph("Reverse tunnel failures", [
            (f'sum by (pipeline) (rate(weir_reverse_tunnel_failures_total{{{PIPELINE}}}[$__rate_interval]))', "{{pipeline}}"),
        ], unit="reqps", width=12),
    ])]
