#!/usr/bin/env bash
# A Debian base image made without any registry: debootstrap --variant=minbase bookworm with Python, imported into
# the local container storage as $IMAGE. The root filesystem tarball is cached, so later runs only import it
# (or do nothing when the image is already there). Needs root, debootstrap and podman.
set -euo pipefail
IMAGE=${1:-localhost/unforgotten-debian:bookworm}
CACHE=${UNFORGOTTEN_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unforgotten}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TARBALL=$CACHE/debian-bookworm-minbase.tar
PODMAN="podman --storage-driver ${STORAGE_DRIVER:-vfs}"

if $PODMAN image exists "$IMAGE"; then
  exit 0
fi
if [ ! -s "$TARBALL" ]; then
  mkdir -p "$CACHE"
  rootfs=$(mktemp -d)
  chmod 755 "$rootfs"  # it becomes the image's /, which every user must be able to enter
  trap 'rm -rf "$rootfs" "$TARBALL.tmp"' EXIT
  echo "debian-base: debootstrap --variant=minbase bookworm (log: $CACHE/debootstrap.log)" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -30 "$CACHE/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi
$PODMAN import --quiet --change 'CMD ["/bin/bash"]' "$TARBALL" "$IMAGE" >/dev/null
