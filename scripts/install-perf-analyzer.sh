#!/usr/bin/env bash
# Installs NVIDIA perf_analyzer for the tests and benchmarks into DIR (default .tools/pa), once.
# The binary ships inside the tritonclient 2.48 wheel; it links libb64 (Debian's libb64-0d) and
# libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel) even on a machine with no GPU. It gets a
# virtual environment of its own: tritonclient 2.48 pins an older protobuf than the server's.
set -euo pipefail
DIR=${1:-.tools/pa}
if ! ldconfig -p | grep -q 'libb64.so.0d'; then
  apt-get install -y -q libb64-0d >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null; }
fi
if [ ! -x "$DIR/bin/perf_analyzer.bin" ]; then
  python3 -m venv "$DIR"
  "$DIR/bin/pip" install -q "tritonclient[all]==2.48.0" nvidia-cuda-runtime-cu12
  mv "$DIR/bin/perf_analyzer" "$DIR/bin/perf_analyzer.bin"
  cat > "$DIR/bin/perf_analyzer" <<'WRAPPER'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
cudart=$(ls -d "$here"/../lib/python3*/site-packages/nvidia/cuda_runtime/lib | head -n 1)
LD_LIBRARY_PATH="$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer.bin" "$@"
WRAPPER
  chmod +x "$DIR/bin/perf_analyzer"
fi
"$DIR/bin/perf_analyzer" --version >/dev/null
echo "$DIR/bin/perf_analyzer"
