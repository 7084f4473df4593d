#!/usr/bin/env bash
# Build the local Debian bookworm base image that the Dockerfile's FROM names.
#
# No registry is reachable from CI, so the base is made with debootstrap (minbase variant) and
# imported with `docker import`. Idempotent: does nothing when the image already exists.
#
# Usage: scripts/build-base-image.sh [image-name]
#   BASE_IMAGE   image name (default promptlearning-base:bookworm; the first argument wins)
#   MIRROR       Debian mirror (default http://deb.debian.org/debian)
#   FORCE=1      rebuild even when the image exists
# Needs root (debootstrap), debootstrap and a running Docker daemon.
set -euo pipefail

IMAGE="${1:-${BASE_IMAGE:-promptlearning-base:bookworm}}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists; skipping (FORCE=1 rebuilds)"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "debootstrap not found: apt-get install -y debootstrap" >&2
  exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "debootstrap needs root" >&2
  exit 1
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/promptlearning-rootfs.XXXXXX")"
cleanup() { rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT

start=$(date +%s)
echo "debootstrap --variant=minbase $SUITE -> $ROOTFS (mirror $MIRROR)"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
  tail -n 40 "$ROOTFS.log" >&2
  rm -f "$ROOTFS.log"
  exit 1
}
rm -f "$ROOTFS.log"

# Updates and security archives, as in the official debian:bookworm image.
cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES

# Keep the image small and apt quiet in containers (what the official image does).
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'APTCONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APTCONF
echo 'APT::Install-Recommends "false";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-recommends"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
rm -rf --one-file-system "$ROOTFS"/dev/* "$ROOTFS"/proc/* "$ROOTFS"/sys/* "$ROOTFS"/tmp/* "$ROOTFS"/run/*

echo "docker import -> $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR" \
    - "$IMAGE" >/dev/null

echo "built $IMAGE in $(($(date +%s) - start))s ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
