"""HTTP/2 (RFC 9113, HPACK RFC 7541) as the gRPC front end needs it: the connection protocol,
frames, streams, output within the peer's windows, and the named limits every client-driven
buffer, table and timer is bound by."""
