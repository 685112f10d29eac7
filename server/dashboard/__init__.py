"""The dashboard served by the server itself (``GET /dashboard`` on the HTTP port): a page and
the JSON feed it polls (``GET /v2/dashboard``), read from the counters the metrics read."""
