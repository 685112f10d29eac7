"""Request tracing as Triton's trace extension: the settings (``--trace-config``, the
TraceSetting API), the 1-of-N sampling, and OpenTelemetry spans exported over OTLP/HTTP
(docs/tracing.md). Below the core: it never imports server.core; the transports call it."""
