#!/usr/bin/env bash
# Installs checkov (the infrastructure-as-code scanner that tests/deploy runs on the Dockerfiles
# and deploy/) into a virtual environment of its own: its pinned dependencies would clash with
# the project's. Usage: scripts/install-checkov.sh [DIR] (default .tools/checkov); once.
set -euo pipefail
VERSION=3.3.30
DIR=${1:-.tools/checkov}
if [ -x "$DIR/bin/checkov" ] && "$DIR/bin/checkov" --version 2>/dev/null | grep -qx "$VERSION"; then
  exit 0
fi
PYTHON=${PYTHON:-python3}
rm -rf "$DIR"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/pip" install -q --upgrade pip
"$DIR/bin/pip" install -q "checkov==$VERSION"
"$DIR/bin/checkov" --version
