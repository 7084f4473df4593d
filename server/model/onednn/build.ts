/**
 * Compiles the oneDNN engine's C shim (shim.c) into build/libplshim.so with the system gcc,
 * against Debian's oneDNN (`libdnnl-dev`). `deno task build-native` runs it; it rebuilds only when
 * shim.c or the compile command changed (a stamp beside the library records both).
 *
 *   deno run -A server/model/onednn/build.ts              # fails, naming what is missing
 *   deno run -A server/model/onednn/build.ts --optional   # warns and exits 0 instead
 */
import { SHIM_LIBRARY } from "./paths.ts";

const here = new URL(".", import.meta.url).pathname;
const source = `${here}shim.c`;
export const DNNL_HEADER = "/usr/include/oneapi/dnnl/dnnl.h";

/** The compile command (portable: hot loops are cloned per ISA by target_clones, no -march). */
export function compileArgs(out: string): string[] {
  return ["-O3", "-fopenmp", "-shared", "-fPIC", "-Wall", "-o", out, source, "-ldnnl", "-lm"];
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function sha256(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Builds the shim when out of date (`out`, default the path lib.ts opens); throws an Error saying
 * what is missing or what failed.
 */
export async function buildShim(
  opts: { quiet?: boolean; out?: string; header?: string } = {},
): Promise<string> {
  const out = opts.out ?? SHIM_LIBRARY, header = opts.header ?? DNNL_HEADER;
  const stamp = `${out}.stamp`;
  const want = await sha256(
    (await Deno.readTextFile(source)) + "\n" + compileArgs(out).join(" "),
  );
  if (await exists(out) && (await Deno.readTextFile(stamp).catch(() => "")) === want) {
    return out;
  }
  if (!(await exists(header))) {
    throw new Error(
      `${header} not found: install the Debian packages libdnnl-dev and libdnnl2 ` +
        "(apt-get install -y libdnnl2 libdnnl-dev)",
    );
  }
  await Deno.mkdir(out.slice(0, out.lastIndexOf("/")), { recursive: true });
  const tmp = `${out}.${Deno.pid}.tmp`;
  let result;
  try {
    result = await new Deno.Command("gcc", { args: compileArgs(tmp), stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`gcc could not run (${(e as Error).message}): install Debian's gcc`);
  }
  if (!result.success) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`gcc failed on ${source}:\n${new TextDecoder().decode(result.stderr)}`);
  }
  await Deno.rename(tmp, out); // atomic: a concurrent loader sees the old or the new
  await Deno.writeTextFile(stamp, want);
  if (!opts.quiet) console.log(`built ${out}`);
  return out;
}

if (import.meta.main) {
  const optional = Deno.args.includes("--optional");
  try {
    await buildShim();
  } catch (e) {
    const msg = `oneDNN engine not built: ${(e as Error).message}`;
    if (!optional) {
      console.error(msg);
      Deno.exit(1);
    }
    console.warn(`warning: ${msg}\n(the fast engine still works; the oneDNN tests will skip)`);
  }
}
