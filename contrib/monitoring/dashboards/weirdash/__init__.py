"""Weir's Grafana dashboards, built from small pieces with grafana-foundation-sdk (see ../build.py)."""
