#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser test (tests/server/dashboard), once.
# playwright drives it at /usr/bin/chromium: no browser is downloaded ("playwright install" is never run).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null; } \
  || { echo "could not install chromium: the dashboard's browser test will fail" >&2; exit 0; }
