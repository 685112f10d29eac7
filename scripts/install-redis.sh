#!/usr/bin/env bash
# Installs redis-server (Debian's package) for the tests of --app-state redis://, once.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
apt-get install -y -q redis-server >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; } \
  || { echo "could not install redis-server: the Redis tests will be skipped" >&2; exit 0; }
