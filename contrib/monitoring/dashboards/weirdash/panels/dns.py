"""dns.filter: answers by result, upstream latency and errors, cache."""
from ..common import PIPELINE, graph


def rows():
    return [("DNS (dns.filter)", [
        graph("Answers by result", [
            (f'sum by (result) (rate(weir_dns_queries_total{{{PIPELINE}}}[$__rate_interval]))', "{{result}}"),
        ], unit="reqps", stack=True),
        graph("Upstream latency (p95)", [
            (f'histogram_quantile(0.95, sum by (upstream, le) (rate(weir_dns_upstream_duration_seconds_bucket{{{PIPELINE}}}[$__rate_interval])))', "{{upstream}}"),
        ], unit="s"),
        graph("Upstream errors", [
            (f'sum by (upstream) (rate(weir_dns_upstream_errors_total{{{PIPELINE}}}[$__rate_interval]))', "{{upstream}}"),
        ], unit="reqps", width=8),
        graph("Cache", [
            (f'sum by (pipeline) (weir_dns_cache_entries{{{PIPELINE}}})', "{{pipeline}} entries"),
            (f'sum by (pipeline) (rate(weir_dns_cache_prefetches_total{{{PIPELINE}}}[$__rate_interval]))', "{{pipeline}} prefetches/s"),
            (f'sum by (pipeline) (rate(weir_dns_stale_answers_total{{{PIPELINE}}}[$__rate_interval]))', "{{pipeline}} stale answers/s"),
        ], width=8),
        graph("Rules loaded", [(f'sum by (list) (weir_dns_rules{{{PIPELINE}}})', "{{list}}")], width=8),
    ])]
