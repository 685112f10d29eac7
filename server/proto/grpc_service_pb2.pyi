"""The KServe v2 gRPC messages, generated in backends/proto/grpc_service_pb2.py: both the server
and the remote backend's client speak them, so they live at the bottom layer. This name stays
for the server's modules, its tests and the benchmarks."""

from backends.proto.grpc_service_pb2 import *  # noqa: F403
