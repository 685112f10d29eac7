#!/usr/bin/env bash
# Installs the peer servers that perf/side_by_side.py compares clipperd with, each into a
# virtual environment of its own under ${CLIPPERD_BENCH_HOME:-~/.cache/clipperd-bench}:
#   pytriton/  NVIDIA PyTriton 0.7.0, which bundles Triton Inference Server 2.51 (CPU, Python backend):
#              side_by_side.py's pytriton, and its tritonserver (perf/peers/tritonserver/: the same
#              binary and Python backend without PyTriton, started with this environment's python)
#   mlserver/  Seldon MLServer 1.7.1 (with uvloop < 0.22: later uvloop releases stop its workers)
# Idempotent: an environment that already holds the pinned release is left as it is.
# Usage: perf/install_peers.sh            prints the folder it installed into
set -euo pipefail
HOME_DIR=${CLIPPERD_BENCH_HOME:-$HOME/.cache/clipperd-bench}
PYTHON=${PYTHON:-python3}
mkdir -p "$HOME_DIR"

install() {  # install NAME DISTRIBUTION VERSION [MORE PIP REQUIREMENTS...]
  local name=$1 dist=$2 version=$3
  shift 3
  local venv="$HOME_DIR/$name" found
  found=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null || true)
  if [ "$found" = "$version" ]; then
    echo "$name: $dist $version already in $venv" >&2
    return
  fi
  echo "$name: installing into $venv" >&2
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "$dist==$version" "$@"
}

install pytriton nvidia-pytriton 0.7.0
# side_by_side.py's tritonserver runs the binary inside the wheel (x86_64 and aarch64 Linux wheels carry it)
site=$("$HOME_DIR/pytriton/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -x "$site/pytriton/tritonserver/bin/tritonserver" ] ||
  echo "pytriton: no tritonserver in $site/pytriton/tritonserver: the tritonserver system cannot run" >&2
install mlserver mlserver 1.7.1 "uvloop<0.22"
echo "$HOME_DIR"
