/**
 * The files the GPU check's bundle needs (scripts/gpu-bundle.sh copies them), from the module
 * graphs of the check's Deno entry points (`deno info --json`):
 * - every repository module the entries reach (imports and dynamic imports alike: small);
 * - the npm packages reached through static imports only, whole, less their TypeScript sources,
 *   declarations and maps: what the check loads. A package reached only by a dynamic import (TF.js,
 *   loaded by the TF.js engines and by p-tuning) stays out, so the check must not take that path;
 * - the files no import names (the scripts, the CUDA sources, the Python oracle and bench).
 * Fails naming any remote module (jsr:, https:): the GPU machine is offline.
 * Prints one repository-relative path per line.
 */
const root = new URL("../../", import.meta.url).href;
const ENTRIES = [
  "test/gpu/check.ts",
  "server/model/cuda/cuda_engine_test.ts",
  "server/model/cuda/cuda_bindings_test.ts",
];
const OTHER_FILES = [
  "test/gpu/run.sh",
  "test/gpu/oracle.py",
  "bench/torch_gpt2.py",
  "bench/torch_gpt2_bench.py",
  "scripts/build-cuda.sh",
  "server/model/cuda/kernels.cu",
  "server/model/cuda/kernels.h",
  "server/model/testing/cublas_prototypes.h",
];

interface Dependency {
  specifier: string;
  code?: { specifier?: string };
  isDynamic?: boolean;
}
interface Graph {
  modules: { specifier: string; dependencies?: Dependency[] }[];
}

async function graphOf(entry: string): Promise<Graph> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL(entry, root).pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`deno info ${entry} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** node_modules/<package>/ of a resolved file URL (scoped names included), or null. */
function packageOf(url: string): string | null {
  const m = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  return m ? m[1] : null;
}

const files = new Set<string>(OTHER_FILES);
const packages = new Set<string>();
const remote: string[] = [];
for (const entry of ENTRIES) {
  const graph = await graphOf(entry);
  const byUrl = new Map(graph.modules.map((m) => [m.specifier, m]));
  // Walk from the entry: every repository module; npm packages through static edges only.
  const seen = new Set<string>();
  const walk = (url: string, statically: boolean) => {
    const key = `${url} ${statically}`;
    if (seen.has(key)) return;
    seen.add(key);
    if (url.startsWith("node:")) return;
    const pkg = packageOf(url);
    if (pkg) {
      if (statically) packages.add(pkg);
      return; // a package's own imports are its package's business
    }
    if (!url.startsWith(root)) {
      remote.push(`${url} (from ${entry})`);
      return;
    }
    files.add(url.slice(root.length));
    for (const d of byUrl.get(url)?.dependencies ?? []) {
      if (d.code?.specifier) walk(d.code.specifier, statically && !d.isDynamic);
    }
  };
  walk(new URL(entry, root).href, true);
}
if (remote.length > 0) {
  throw new Error(`the GPU check may import only local modules: ${remote.join(", ")}`);
}

const SKIP = /(\.d\.[cm]?ts|\.map|\.ts|\.md)$|\/src\//;
async function* packageFiles(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(new URL(dir, root))) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) yield* packageFiles(p);
    else if (e.isFile && !SKIP.test(p)) yield p;
  }
}
for (const pkg of packages) {
  for await (const f of packageFiles(`node_modules/${pkg}`)) files.add(f);
}
console.log([...files].sort().join("\n"));
