#!/usr/bin/env bash
# The local Debian base the image builds start from where no registry is reachable:
# debootstrap's minbase of bookworm from the mirror apt already uses, imported into podman.
# Needs root, podman and debootstrap (apt-get install podman debootstrap). Does nothing when
# the image exists. Usage: scripts/image-base.sh [IMAGE]  (default localhost/debian:bookworm)
set -euo pipefail

image=${1:-localhost/debian:bookworm}
suite=bookworm

if podman image exists "$image"; then
    exit 0
fi

# The first Debian URI apt's own sources name (deb822 "URIs:" or a one-line "deb URI suite").
mirror=$(grep -rhoE '^(URIs:[[:space:]]*|deb[[:space:]]+)[^[:space:]]+/debian/?([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | awk '{print $2}' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d /tmp/clipperd-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "image-base: debootstrap --variant=minbase $suite from $mirror" >&2
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >/dev/null
# apt inside the build reads the same mirror; debootstrap wrote only the main suite
printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite" >"$rootfs/etc/apt/sources.list"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "image-base: $image" >&2
