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
const stamp = `${SHIM_LIBRARY}.stamp`;
const HEADER = "/usr/include/oneapi/dnnl/dnnl.h";

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

/** Builds the shim when out of date; throws an Error saying what is missing or what failed. */
export async function buildShim(opts: { quiet?: boolean } = {}): Promise<string> {
  const want = await sha256(
    (await Deno.readTextFile(source)) + "\n" + compileArgs(SHIM_LIBRARY).join(" "),
  );
  if (await exists(SHIM_LIBRARY) && (await Deno.readTextFile(stamp).catch(() => "")) === want) {
    return SHIM_LIBRARY;
  }
  if (!(await exists(HEADER))) {
    throw new Error(
      `${HEADER} not found: install the Debian packages libdnnl-dev and libdnnl2 ` +
        "(apt-get install -y libdnnl2 libdnnl-dev)",
    );
  }
  await Deno.mkdir(SHIM_LIBRARY.slice(0, SHIM_LIBRARY.lastIndexOf("/")), { recursive: true });
  const tmp = `${SHIM_LIBRARY}.${Deno.pid}.tmp`;
  let out;
  try {
    out = await new Deno.Command("gcc", { args: compileArgs(tmp), stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`gcc could not run (${(e as Error).message}): install Debian's gcc`);
  }
  if (!out.success) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`gcc failed on ${source}:\n${new TextDecoder().decode(out.stderr)}`);
  }
  await Deno.rename(tmp, SHIM_LIBRARY); // atomic: a concurrent loader sees the old or the new
  await Deno.writeTextFile(stamp, want);
  if (!opts.quiet) console.log(`built ${SHIM_LIBRARY}`);
  return SHIM_LIBRARY;
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
