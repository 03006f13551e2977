"""Prometheus exporter: ``exporters.collector`` reads the switch's counters at scrape time; the daemon
serves it on ``--metrics-address`` (127.0.0.1:9640 by default)."""
