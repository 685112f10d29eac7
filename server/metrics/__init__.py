"""Prometheus metrics on ``--metrics-port``: the exporter (Triton's families and clipperd's
own), the applications' families, and the event loop's lag."""
