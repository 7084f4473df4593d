#!/usr/bin/env bash
# The API contract, as CI checks it: buf lints proto/ (rules in buf.yaml) and checks it for
# breaking changes against the proto of the last release tag. Needs `npm ci` first (buf is the
# devDependency @bufbuild/buf, its binary from the platform package npm installs). Without the
# release tags in the clone (a shallow clone, a copy without git history) it compares with the
# newest committed snapshot of a release's proto, api/releases/<tag>/ (api/README.md).
#
#   scripts/check-proto.sh                      # against the last tag v* reachable from HEAD
#   PROTO_BASE_TAG=v0.1.0 scripts/check-proto.sh
#   PROTO_AGAINST='.git#branch=main,subdir=proto' scripts/check-proto.sh   # any buf input
#
# Exits non-zero, naming what failed, on a lint finding, a breaking change, or nothing to compare
# with.
set -euo pipefail
cd "$(dirname "$0")/.."

buf=node_modules/.bin/buf
if [[ ! -x "$buf" ]]; then
  echo "error: $buf is missing: run npm ci (buf is the devDependency @bufbuild/buf)" >&2
  exit 1
fi

against="${PROTO_AGAINST:-}"
if [[ -z "$against" ]]; then
  tag="${PROTO_BASE_TAG:-}"
  if [[ -z "$tag" ]]; then
    tag=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || true)
  fi
  if [[ -n "$tag" ]]; then
    if ! git rev-parse -q --verify "refs/tags/$tag" >/dev/null 2>&1; then
      echo "error: PROTO_BASE_TAG=$tag is not a tag of this clone" >&2
      exit 1
    fi
    # The repository's own git directory (a worktree's .git is a file naming it).
    against="$(git rev-parse --path-format=absolute --git-common-dir)#tag=$tag,subdir=proto"
  else
    # No tags here: the newest release's committed snapshot (api/README.md).
    snapshot=$(ls -d api/releases/v* 2>/dev/null | sort -V | tail -1 || true)
    if [[ -z "$snapshot" ]]; then
      echo "error: no release tag (v*) reachable from HEAD and no api/releases/ snapshot to" \
        "check proto/ against: fetch the tags (git fetch --tags --unshallow) or set" \
        "PROTO_BASE_TAG or PROTO_AGAINST" >&2
      exit 1
    fi
    echo "note: no release tag in this clone: checking against the snapshot $snapshot"
    against="$snapshot"
  fi
fi

if ! "$buf" lint proto; then
  echo "error: buf lint found the problems above in proto/ (rules: buf.yaml)" >&2
  exit 1
fi
echo "buf lint: proto/ passes"

if ! "$buf" breaking proto --against "$against"; then
  echo "error: proto/ breaks the API of $against (above). Within promptlearning.v1 only" \
    "backward-compatible changes are allowed: add fields, messages, RPCs and enum values;" \
    "never renumber, retype, rename or remove (reserve removed numbers and names). A breaking" \
    "change goes into a new package, promptlearning.v2." >&2
  exit 1
fi
echo "buf breaking: proto/ keeps the API of $against"
