#!/usr/bin/env bash
# Installs iproute2 (Debian's package: `ip netns`, veth pairs) for tests/server/test_access_netns.py,
# which makes its own network namespace to test a non-loopback client for real; once. Without it
# (or without root) that test is skipped, never failed.
set -euo pipefail
if command -v ip >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "iproute2 is not installed and this is not root: the network-namespace tests will be skipped" >&2
  exit 0
fi
apt-get install -y -q iproute2 >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get install -y -q iproute2 >/dev/null; } \
  || { echo "could not install iproute2: the network-namespace tests will be skipped" >&2; exit 0; }
