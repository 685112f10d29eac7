#!/usr/bin/env bash
# Builds one of the Dockerfiles with podman on this machine, where no registry is reachable:
# from the local Debian base (scripts/image-base.sh makes it), with the machine's CA bundle and
# the local wheel folder that `pip config list` names bind-mounted for pip (build arguments only,
# nothing of them is left in the image). Needs root and podman; one build at a time (CPU-heavy).
# Usage: scripts/build-image.sh DOCKERFILE TAG [more podman build arguments]
set -euo pipefail

dockerfile=${1:?usage: build-image.sh DOCKERFILE TAG [podman build args]}
tag=${2:?usage: build-image.sh DOCKERFILE TAG [podman build args]}
shift 2
cd "$(dirname "$0")/.."
base=${CLIPPERD_IMAGE_BASE:-localhost/debian:bookworm}
python=${PYTHON:-python3}

scripts/image-base.sh "$base"
args=(--isolation=chroot --format docker --build-arg "BASE=$base" -f "$dockerfile" -t "$tag")

ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
    args+=(-v "$ca:/etc/ssl/host-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/host-ca.crt)
fi
# the first folder of pip's find-links (this machine's PyTorch CPU build lies there)
wheels=$("$python" -m pip config list 2>/dev/null | sed -nE "s/^[^=]*find-links='([^' ]+).*/\1/p" | head -n1 || true)
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
    # the local folder replaces PyTorch's own CPU index, which this machine may not reach
    args+=(-v "$wheels:/run/wheels:ro" --build-arg PIP_FIND_LINKS=/run/wheels --build-arg TORCH_INDEX_URL=)
fi

echo "build-image: podman build ${args[*]} $*" >&2
podman build "${args[@]}" "$@" .
