"""KServe v2 HTTP/REST with Triton's binary tensor extension: the HTTP/1.1 server
(``http_server``, httptools), the router and routes, JSON/binary codecs, request bodies and their
limits, statistics JSON, the shared-memory endpoints, and Clipper's application routes."""
