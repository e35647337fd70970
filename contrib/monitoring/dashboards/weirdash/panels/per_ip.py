"""count.ebpf: traffic per client address, and the map that holds the addresses."""
from ..common import PIPELINE, graph


def rows():
    return [("Traffic per address (count.ebpf)", [
        graph("Busiest addresses", [
            (f'topk(15, sum by (ip) (rate(weir_ip_bytes_total{{{PIPELINE}, ip!="other"}}[$__rate_interval]))) * 8', "{{ip}}"),
            (f'sum(rate(weir_ip_bytes_total{{{PIPELINE}, ip="other"}}[$__rate_interval])) * 8', "other"),
        ], unit="bps", width=24, description="Both directions; top_n addresses per stage, the rest as other."),
        graph("Packets by direction", [
            (f'sum by (pipeline, direction) (rate(weir_ip_packets_total{{{PIPELINE}}}[$__rate_interval]))', "{{pipeline}} {{direction}}"),
        ], unit="pps", width=8),
        graph("Map fill", [
            (f'weir_ebpf_map_entries{{{PIPELINE}}} / weir_ebpf_map_max_entries{{{PIPELINE}}}', "{{pipeline}}"),
        ], unit="percentunit", width=8),
        graph("Evictions and addresses in other", [
            (f'rate(weir_ebpf_map_evictions_total{{{PIPELINE}}}[$__rate_interval])', "{{pipeline}} evicted/s"),
            (f'weir_ip_other_addresses{{{PIPELINE}}}', "{{pipeline}} in other"),
        ], width=8),
    ])]
