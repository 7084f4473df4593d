#!/usr/bin/env bash
# Writes the GPU check's bundle: one self-contained folder (at most 60 MiB) that runs the check
# (test/gpu/run.sh) on a bare, offline GPU machine with CUDA and Python/PyTorch but no Node, npm
# or Deno. It holds the sources the check imports (their module graph: test/gpu/bundle_files.ts),
# the npm packages they import statically (yaml, zod, @huggingface/tokenizers; TF.js stays out), the CUDA sources, the
# Python oracle and bench, Deno compressed with xz (run.sh unpacks it with xz or Python's lzma),
# and a MANIFEST naming the commit; no model weights and no datasets (the check generates its
# checkpoints and records).
#
#   scripts/gpu-bundle.sh OUTDIR      then, on the GPU machine: bash OUTDIR/run.sh
#
# With the device tool: bundle into the ignored .gpu/ and send that folder alone (DEVELOPERS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu-bundle.sh OUTDIR}"
limit=$((60 * 1024 * 1024))
deno="${DENO:-node_modules/deno/deno}"
[ -x "$deno" ] || { echo "gpu-bundle: no Deno at $deno (run npm ci)" >&2; exit 1; }
command -v xz >/dev/null || { echo "gpu-bundle: xz not found (apt-get install xz-utils)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
files="$("$deno" run -A test/gpu/bundle_files.ts)"
while IFS= read -r f; do
  mkdir -p "$out/$(dirname "$f")"
  cp "$f" "$out/$f"
done <<< "$files"
# Deno resolves the npm packages copied above from node_modules/, as in the repository.
echo '{ "nodeModulesDir": "manual" }' > "$out/deno.json"
"$deno" eval 'const out = Deno.args[0], deps: Record<string, string> = {};
for (const scope of Deno.readDirSync(`${out}/node_modules`)) {
  const names = scope.name.startsWith("@")
    ? [...Deno.readDirSync(`${out}/node_modules/${scope.name}`)].map((e) => `${scope.name}/${e.name}`)
    : [scope.name];
  for (const n of names) {
    deps[n] = JSON.parse(Deno.readTextFileSync(`${out}/node_modules/${n}/package.json`)).version;
  }
}
Deno.writeTextFileSync(`${out}/package.json`, JSON.stringify({ private: true, dependencies: deps }, null, 2) + "\n");' "$out"

# Deno compressed once per binary (xz -6: 96 MB -> about 30 MB, 30 s on 2 cores), kept in
# node_modules/.cache so later bundles of the same Deno reuse it.
sum="$(sha256sum "$deno" | cut -c1-16)"
cache="node_modules/.cache/gpu-bundle/deno-$sum.xz"
if [ ! -f "$cache" ]; then
  mkdir -p "$(dirname "$cache")"
  xz -T0 -6 -c "$deno" > "$cache.tmp"
  mv "$cache.tmp" "$cache"
fi
cp "$cache" "$out/deno.xz"

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# The GPU check from this bundle (see test/gpu/run.sh).
exec bash "$(dirname "$0")/test/gpu/run.sh" "$@"
RUN
chmod +x "$out/run.sh" "$out/test/gpu/run.sh" "$out/scripts/build-cuda.sh"
{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "deno: $("$deno" --version | head -1)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "files:"
  (cd "$out" && find . -type f ! -name MANIFEST | sort | sed 's|^\./|  |')
} > "$out/MANIFEST"

size=$(du -sb "$out" | cut -f1)
if [ "$size" -gt "$limit" ]; then
  echo "gpu-bundle: $out is $size bytes, over the $limit-byte (60 MiB) limit" >&2
  exit 1
fi
echo "gpu-bundle: $out ($(( size / 1024 / 1024 )) MiB, $(wc -l <<< "$files") files + deno.xz)"
