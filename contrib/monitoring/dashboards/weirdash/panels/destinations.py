"""Where clients of proxy listeners and relay exits go (top destinations per pipeline)."""
from ..common import PIPELINE, graph


def rows():
    return [("Destinations", [
        graph("Top destinations by traffic", [
            (f'topk(10, sum by (destination) (rate(weir_destination_bytes_total{{{PIPELINE}, destination!="other"}}[$__rate_interval]))) * 8', "{{destination}}"),
            (f'sum(rate(weir_destination_bytes_total{{{PIPELINE}, destination="other"}}[$__rate_interval])) * 8', "other"),
        ], unit="bps", description="As clients named them (SOCKS5, HTTP CONNECT, TLS SNI, a relay exit's address header); metrics.destinations_top per pipeline, the rest as other."),
        graph("Top destinations by connections", [
            (f'topk(10, sum by (destination) (rate(weir_destination_connections_total{{{PIPELINE}, destination!="other"}}[$__rate_interval])))', "{{destination}}"),
        ], unit="cps"),
    ])]
