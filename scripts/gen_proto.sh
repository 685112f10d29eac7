#!/usr/bin/env bash
# Regenerate the Python protobuf modules (and mypy stubs) from the project's own .proto files.
# Run from anywhere; paths are resolved against the repository root. Needs grpcio-tools and
# mypy-protobuf in .venv. No gRPC stubs (_pb2_grpc) are generated: the server registers its
# handlers itself under the wire name "inference.GRPCInferenceService".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
PROTOS=(
  backends/proto/model_config.proto
  backends/proto/grpc_service.proto
)
"$PYTHON" -m grpc_tools.protoc -I . \
  --plugin=protoc-gen-mypy="$(dirname "$PYTHON")/protoc-gen-mypy" \
  --python_out=. --mypy_out=. "${PROTOS[@]}"
echo "generated: backends/proto/model_config_pb2.py(.pyi) backends/proto/grpc_service_pb2.py(.pyi)"
