"""The remote backend (docs/backends/remote.md): a model of the repository served by KServe v2
servers elsewhere, each endpoint one device of the scheduler (schedulers/remote.py).

settings (config parameters), client (the protocol-neutral contract) with grpc_client and
http_client (on h1, a lean HTTP/1.1 client), wire (tensors to and from both), errors
(endpoint failure or the model's own), endpoints (resolution, health, ejection, counters),
autocomplete (inputs and outputs from the remote model), backend (the Backend the registry names ``remote``)."""
