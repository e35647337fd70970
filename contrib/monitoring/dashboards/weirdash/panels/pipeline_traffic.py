"""Bytes, connections and errors per pipeline."""
from ..common import PIPELINE, graph


def rows():
    return [("Pipeline traffic", [
        graph("Throughput", [
            (f'sum by (pipeline, direction) (rate(weir_pipeline_bytes_total{{{PIPELINE}}}[$__rate_interval])) * 8', "{{pipeline}} {{direction}}"),
        ], unit="bps", description="in: client to target; out: target to client."),
        graph("New connections", [
            (f'sum by (pipeline) (rate(weir_pipeline_connections_total{{{PIPELINE}}}[$__rate_interval]))', "{{pipeline}}"),
        ], unit="cps"),
        graph("Open connections", [(f'sum by (pipeline) (weir_pipeline_connections_active{{{PIPELINE}}})', "{{pipeline}}")]),
        graph("Errors", [
            (f'sum by (pipeline, stage, reason) (rate(weir_pipeline_errors_total{{{PIPELINE}}}[$__rate_interval]))', "{{pipeline}} {{stage}} {{reason}}"),
        ], unit="reqps", description="By stage and reason: handshake_timeout, closed_during_handshake, closed_without_data (health checks, scans), connect_failed, connection_limit…"),
    ])]
