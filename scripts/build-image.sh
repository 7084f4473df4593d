#!/usr/bin/env bash
# Build the service image: the debootstrap base first (skipped when it exists), then the
# Dockerfile. Prints how long each part took.
#
# Usage: scripts/build-image.sh [extra docker build args...]
#   IMAGE        tag to build (default promptlearning:<package.json version>)
#   BASE_IMAGE   base image name (default promptlearning-base:bookworm, the Dockerfile's FROM)
#   EXTRA_CA_CERTS_FILE  PEM file of extra CAs that `npm ci` must trust during the build (a
#                TLS-inspecting proxy). Default: the host's /usr/local/share/ca-certificates/*.crt
#                if any; set it empty to pass none. Only the discarded deps stage sees them.
# `--network host`: apt and npm need the network during the build, and a daemon started with
# --bridge=none gives build containers none otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

version="$(sed -n 's/^  "version": "\([^"]*\)",\{0,1\}$/\1/p' package.json | head -n 1)"
IMAGE="${IMAGE:-promptlearning:${version:?cannot read the version from package.json}}"
BASE_IMAGE="${BASE_IMAGE:-promptlearning-base:bookworm}"

ca_args=()
if [[ -n "${EXTRA_CA_CERTS_FILE+set}" ]]; then
  ca_files=(${EXTRA_CA_CERTS_FILE:+"$EXTRA_CA_CERTS_FILE"})
else
  shopt -s nullglob
  ca_files=(/usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt)
  shopt -u nullglob
fi
if ((${#ca_files[@]} > 0)); then
  echo "trusting extra CAs during the build: ${ca_files[*]}"
  ca_args=(--build-arg "EXTRA_CA_CERTS=$(cat "${ca_files[@]}")")
fi

t0=$(date +%s)
scripts/build-base-image.sh "$BASE_IMAGE"
t1=$(date +%s)
docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" "${ca_args[@]}" -t "$IMAGE" "$@" .
t2=$(date +%s)
echo "base image: $((t1 - t0))s; docker build: $((t2 - t1))s; $IMAGE is" \
  "$(docker image inspect -f '{{.Size}}' "$IMAGE") bytes"
