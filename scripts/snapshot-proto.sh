#!/usr/bin/env bash
# Writes api/releases/<tag>/: the .proto files of proto/ as release tag <tag> has them, which
# scripts/check-proto.sh compares proto/ with when a clone has no tags (api/README.md).
#   scripts/snapshot-proto.sh v0.2.0
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:?usage: scripts/snapshot-proto.sh TAG}"
if ! git rev-parse -q --verify "refs/tags/$tag" >/dev/null; then
  echo "error: $tag is not a tag of this repository" >&2
  exit 1
fi
out="api/releases/$tag"
rm -rf "$out"
git ls-tree -r --name-only "$tag" proto | grep '\.proto$' | while read -r f; do
  rel="${f#proto/}"
  mkdir -p "$out/$(dirname "$rel")"
  git show "$tag:$f" >"$out/$rel"
done
echo "wrote $out"
