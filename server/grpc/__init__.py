"""KServe v2 gRPC (``inference.GRPCInferenceService``) and the standard health service: the
handlers (``service``), wire codecs, statistics messages, and the native front end (``native``,
``calls``, ``limits``, ``inflate``) on clipperd's own HTTP/2 implementation (``http2``); grpc.aio
remains available (``--grpc-frontend grpcio``)."""
