#!/usr/bin/env bash
# Installs Clipper's own admin client, clipper_admin 0.4.1, into a virtual environment of its own
# (tests/admin/test_clipper_admin.py drives clipperd with it). Its declared dependencies cannot be
# met here: it pins cloudpickle 0.5.3, which fails to import on Python >= 3.8. So the package goes
# in with --no-deps, followed by the packages it imports at `import clipper_admin` (docker,
# kubernetes, requests, numpy, pyyaml, jinja2, ...) and cloudpickle 2.2.1, the newest line that
# still has the CloudPickler(file, protocol) clipper_admin calls and works on Python 3.11; and
# protobuf, which clipperd_admin itself imports (clipperd_admin.clipper runs in this environment).
# Usage: scripts/install-clipper-admin.sh [DIR] (default .tools/clipper-admin); once.
set -euo pipefail
STAMP=clipper_admin-0.4.1+cloudpickle-2.2.1+protobuf-6.33.6
DIR=${1:-.tools/clipper-admin}
if [ -x "$DIR/bin/python" ] && [ "$(cat "$DIR/.installed" 2>/dev/null)" = "$STAMP" ] &&
  "$DIR/bin/python" -c "import clipper_admin" 2>/dev/null; then
  exit 0
fi
PYTHON=${PYTHON:-python3}
rm -rf "$DIR"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/pip" install -q --upgrade pip
"$DIR/bin/pip" install -q --no-deps clipper_admin==0.4.1
"$DIR/bin/pip" install -q cloudpickle==2.2.1 requests==2.34.2 numpy pyyaml docker==7.2.0 \
  kubernetes==37.0.3 prometheus_client redis psutil jsonschema jinja2 protobuf==6.33.6
"$DIR/bin/python" -c "import clipper_admin; print('clipper_admin', clipper_admin.__version__)"
echo "$STAMP" >"$DIR/.installed"
