#!/usr/bin/env bash
# Builds the CPU stand-in for the images' `pytorch/pytorch` base, offline from a registry's point of
# view: a Debian bookworm root file system made with debootstrap (Debian's mirror), imported into
# the engine, plus a venv on PATH holding the CPU torch wheel (the one the Makefile pins) and the CA
# bundle pip needs to reach the package index from inside a container.
# Prints the image's tag. The image is cached in the engine under a tag derived from this script,
# Dockerfile.base and the torch wheel, and the root file system as a tarball under
# $RLAIF_CI_CACHE (default ~/.cache/rlaif-compose-test), so a second run on the same machine
# builds nothing.
#   ci/base_image.sh            # -> rlaif-test-base:<hash>
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${RLAIF_CI_CACHE:-$HOME/.cache/rlaif-compose-test}"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
torch_spec="${TORCH_CPU:-torch==2.13.0}"
ca_bundle="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
mkdir -p "$cache/wheels"

log() { echo "[base-image] $*" >&2; }

# The torch wheel: pip finds it where the Makefile's install does (a local file, or the index).
wheel=$(ls "$cache/wheels"/torch-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    log "fetching $torch_spec (CPU build) into $cache/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 --implementation cp -d "$cache/wheels" "$torch_spec" >&2
    wheel=$(ls "$cache/wheels"/torch-*.whl | head -n 1)
fi

tag="rlaif-test-base:$(cat "$0" "$here/Dockerfile.base" | sha256sum | cut -c1-12)-$(basename "$wheel" .whl | sha256sum | cut -c1-8)"
if docker image inspect "$tag" >/dev/null 2>&1; then
    log "cached: $tag"
    echo "$tag"
    exit 0
fi

rootfs_tar="$cache/rootfs-$suite.tar"
if [ ! -s "$rootfs_tar" ]; then
    command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get install -y -q debootstrap >&2; }
    work=$(mktemp -d)
    log "debootstrap $suite (minbase + python3) from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$suite" "$work/rootfs" "$mirror" >&2
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -cf "$rootfs_tar.part" .
    mv "$rootfs_tar.part" "$rootfs_tar"
    rm -rf "$work"
fi
rootfs_tag="rlaif-test-rootfs:$suite"
docker image inspect "$rootfs_tag" >/dev/null 2>&1 || docker import "$rootfs_tar" "$rootfs_tag" >&2

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$wheel" "$context/"
cp "$ca_bundle" "$context/ca-bundle.crt"
log "building $tag"
docker build -q -f "$here/Dockerfile.base" --build-arg ROOTFS="$rootfs_tag" \
    --build-arg TORCH_WHEEL="$(basename "$wheel")" -t "$tag" "$context" >&2
echo "$tag"
