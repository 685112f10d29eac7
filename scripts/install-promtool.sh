#!/usr/bin/env bash
# Installs promtool (Debian's prometheus package) to check deploy/prometheus/*.yaml, once.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# only the package's files are wanted: the server it ships is not started (policy-rc.d says no)
apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; } \
  || { echo "could not install prometheus (promtool): the alert-rule test will fail" >&2; exit 0; }
