#!/usr/bin/env bash
# Make sure a Docker daemon answers at /var/run/docker.sock, starting one when none does.
#
# The daemon runs without a bridge or iptables rules (sandboxes and CI machines without
# NET_ADMIN): containers and builds use host networking (`--network host`), which is what
# scripts/build-image.sh and test/container_test.ts do.
#
#   INSTALL=1      apt-get install docker.io (and debootstrap, for the base image) when missing
#   DOCKERD_LOG    daemon log (default /tmp/dockerd.log)
#   WAIT_S         how long to wait for the daemon to answer (default 30)
# Exits 0 when the daemon answers, 1 otherwise (CI can then leave the container test skipped).
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
WAIT_S="${WAIT_S:-30}"

if docker info >/dev/null 2>&1; then
  echo "docker daemon already answers"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  if [[ "${INSTALL:-0}" == 1 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
  elif ! command -v dockerd >/dev/null 2>&1; then
    echo "dockerd not found: apt-get install -y docker.io (or run with INSTALL=1)" >&2
    exit 1
  fi
fi

echo "starting dockerd (log: $DOCKERD_LOG)"
nohup dockerd --bridge=none --iptables=false >"$DOCKERD_LOG" 2>&1 &
pid=$!
for ((i = 0; i < WAIT_S * 4; i++)); do
  if docker info >/dev/null 2>&1; then
    echo "docker daemon answers (pid $pid)"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "dockerd exited; last lines of $DOCKERD_LOG:" >&2
    tail -n 20 "$DOCKERD_LOG" >&2
    exit 1
  fi
  sleep 0.25
done
echo "dockerd did not answer within ${WAIT_S}s; last lines of $DOCKERD_LOG:" >&2
tail -n 20 "$DOCKERD_LOG" >&2
exit 1
