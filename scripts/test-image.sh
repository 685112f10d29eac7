#!/usr/bin/env bash
# `make test-image`: builds the CPU image with podman from the local Debian base (the recipe of
# docs/deploy.md, "Images") and tries it: tests/deploy/test_image.py starts the server from the
# image's own file system and calls it with tritonclient. Minutes, root only; not in `make test`.
# The test runs in a network namespace of its own, so the image's ports (8000-8002) are free
# whatever else this machine serves. Environment: CLIPPERD_TEST_IMAGE (the tag to build and
# test; tests/deploy/conftest.py collects test_image.py only where it is set), DOCKERFILE (default
# Dockerfile), PYTHON (the interpreter with pytest and tritonclient).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${CLIPPERD_TEST_IMAGE:-localhost/clipperd:test}
dockerfile=${DOCKERFILE:-Dockerfile}
python=${PYTHON:-.venv/bin/python}

if [ "$(id -u)" != 0 ]; then
    echo "test-image: needs root (podman build with chroot isolation, mounts, chroot)" >&2
    exit 1
fi
missing=()
for tool in podman debootstrap ip; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman debootstrap iproute2 >/dev/null
fi

started=$(date +%s)
# every framework the bundled repository uses, so that the image serves all of it
extras=${IMAGE_EXTRAS:-torch,onnx,tensorflow,sklearn,xgboost,spark}
apt_packages=${IMAGE_APT_PACKAGES:-openjdk-17-jre-headless}
scripts/build-image.sh "$dockerfile" "$image" --build-arg "EXTRAS=$extras" --build-arg "APT_PACKAGES=$apt_packages"
echo "test-image: $image built in $(( $(date +%s) - started )) s, $(podman image inspect --format '{{.Size}}' "$image") bytes" >&2

namespace=clipperd-image-$$
ip netns add "$namespace"
trap 'ip netns delete "$namespace"' EXIT
ip -n "$namespace" link set lo up
CLIPPERD_TEST_IMAGE=$image ip netns exec "$namespace" \
    "$python" -m pytest tests/deploy/test_image.py -p no:cacheprovider -q -ra "$@"
