"""wireguard: peers connected, traffic per peer, quota use."""
from ..common import PIPELINE, graph, single


def rows():
    return [("VPN (wireguard)", [
        single("Peers connected", f'sum(weir_wireguard_peers{{{PIPELINE}, state="connected"}})', width=6),
        single("Peers over quota", f'sum(weir_wireguard_peers{{{PIPELINE}, state="disabled"}}) or vector(0)', width=6),
        graph("Peers by state", [(f'sum by (state) (weir_wireguard_peers{{{PIPELINE}}})', "{{state}}")], width=12, height=4),
        graph("Busiest peers", [
            (f'topk(10, sum by (peer) (rate(weir_wireguard_peer_receive_bytes_total{{{PIPELINE}}}[$__rate_interval]) + rate(weir_wireguard_peer_transmit_bytes_total{{{PIPELINE}}}[$__rate_interval]))) * 8', "{{peer}}"),
        ], unit="bps", width=12),
        graph("Quota used", [
            (f'weir_wireguard_peer_period_bytes{{{PIPELINE}}} / weir_wireguard_peer_quota_bytes{{{PIPELINE}}}', "{{peer}}"),
        ], unit="percentunit", width=12),
        graph("Seconds since last handshake", [
            (f'time() - weir_wireguard_peer_last_handshake_timestamp_seconds{{{PIPELINE}}} > 0', "{{peer}}"),
        ], unit="s", width=24),
    ])]
