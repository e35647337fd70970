"""enforce.nftables: what the egress allowlist let through and dropped, its sets and domain resolution."""
from ..common import PIPELINE, graph


def rows():
    return [("Egress gateway (enforce.nftables)", [
        graph("Dropped", [
            (f'sum by (pipeline) (rate(weir_nft_dropped_packets_total{{{PIPELINE}}}[$__rate_interval]))', "{{pipeline}}"),
        ], unit="pps", width=8),
        graph("Allowed destinations (count_elements)", [
            (f'topk(10, sum by (destination) (rate(weir_nft_allowed_bytes_total{{{PIPELINE}}}[$__rate_interval]))) * 8', "{{destination}}"),
        ], unit="bps", width=8),
        graph("Set fill", [
            (f'weir_nft_set_elements{{{PIPELINE}}} / on (instance, pipeline, set) weir_nft_set_max_elements{{{PIPELINE}}}', "{{pipeline}} {{set}}"),
        ], unit="percentunit", width=8),
        graph("Domain resolutions", [
            (f'sum by (pipeline, result) (rate(weir_nft_domain_resolutions_total{{{PIPELINE}}}[$__rate_interval]))', "{{pipeline}} {{result}}"),
        ], unit="reqps", width=12),
        graph("Addresses followed from DNS answers", [
            (f'sum by (pipeline, family) (weir_nft_follow_elements{{{PIPELINE}}})', "{{pipeline}} {{family}}"),
        ], width=12),
    ])]
