"""The outside world and the process: the ``clipperd`` command line (``cli``), its settings
(``settings``), the server's lifecycle (``lifecycle``), who may call what (``access``), TLS
(``tls``), and the subpackages:

- ``core``: the data plane every transport calls, the one entry point that runs a model
  version (``inference``), the name resolver, validation, transport-neutral messages, status
  codes, the model repository manager, model versions and system shared memory;
- ``grpc``: KServe v2 gRPC (the service, codecs, health, statistics) on clipperd's own HTTP/2
  implementation (``grpc.http2``) or on grpc.aio;
- ``rest``: KServe v2 HTTP/REST on clipperd's own HTTP/1.1 server (router, routes, codecs,
  bodies, limits), Clipper's application routes included;
- ``applications``: Clipper applications on the server (the registry, admin operations, state);
- ``metrics``: the Prometheus exporter and the event loop's lag.

Imports point down (cli → lifecycle → transports and metrics → access/tls → applications →
core → settings); ``lint-imports`` checks it."""

__version__ = "0.1.0"
