"""Is the agent up, is its configuration applied, is it connected to its coordinator."""
from ..common import AGENT, graph, single


def rows():
    return [("Agent health", [
        single("Agents up", f'sum(up{{{AGENT}}})', description="Agents Prometheus scrapes now."),
        single("Last reload successful", f'min(weir_config_last_reload_successful{{{AGENT}}})',
               description="0 when an agent's last reload or bundle was refused (it runs its previous configuration)."),
        single("Reloads refused (24 h)", f'sum(increase(weir_config_reloads_total{{{AGENT}, result="failure"}}[24h]))'),
        single("Stages not in force", f'count(weir_stage_healthy{{{AGENT}}} == 0) or vector(0)',
               description="Service stages reporting a problem (/healthz names it)."),
        single("Coordinator connected", f'min(weir_coordinator_connected{{{AGENT}}})',
               description="1 while every selected agent with a coordinator is connected to it."),
        single("Certificate expiring first", f'min(weir_tls_certificate_expiry_timestamp_seconds{{{AGENT}}}) - time()', unit="s"),
        graph("Reloads", [(f'sum by (instance, result) (increase(weir_config_reloads_total{{{AGENT}}}[$__rate_interval]))', "{{instance}} {{result}}")]),
        graph("Reload duration (p99)", [
            (f'histogram_quantile(0.99, sum by (instance, le) (rate(weir_config_reload_duration_seconds_bucket{{{AGENT}}}[$__rate_interval])))', "{{instance}}"),
        ], unit="s"),
    ])]
