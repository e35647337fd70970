"""shape.tc: each class's throughput against its rate and ceiling, drops."""
from ..common import PIPELINE, graph


def rows():
    return [("Shaping (shape.tc)", [
        graph("Class throughput", [
            (f'sum by (pipeline, interface, direction, class) (rate(weir_tc_class_bytes_total{{{PIPELINE}}}[$__rate_interval])) * 8',
             "{{pipeline}} {{interface}} {{direction}} {{class}}"),
        ], unit="bps", width=12),
        graph("Ceiling", [(f'weir_tc_class_ceil_bits{{{PIPELINE}}}', "{{pipeline}} {{interface}} {{direction}} {{class}}")], unit="bps", width=12),
        graph("Drops", [
            (f'sum by (pipeline, interface, direction, class) (rate(weir_tc_class_drops_total{{{PIPELINE}}}[$__rate_interval]))',
             "{{pipeline}} {{interface}} {{direction}} {{class}}"),
        ], unit="pps", width=12),
        graph("Over limit", [
            (f'sum by (pipeline, interface, direction, class) (rate(weir_tc_class_overlimits_total{{{PIPELINE}}}[$__rate_interval]))',
             "{{pipeline}} {{interface}} {{direction}} {{class}}"),
        ], unit="pps", width=12),
    ])]
