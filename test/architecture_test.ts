/**
 * The data flows one way: proto -> rpc -> domain services (training, serving, registry) -> model.
 * These tests read every module's imports and fail on one that runs back up the layers.
 */
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { assertEquals } from "./assert.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** What each folder may import (besides itself, npm packages and node: builtins). */
const ALLOWED: Record<string, string[]> = {
  "server/util": ["server/errors.ts"],
  "server/model": ["server/util", "server/errors.ts"],
  "server/prompts": ["server/model", "server/util", "server/errors.ts"],
  "server/registry": ["server/model", "server/prompts", "server/util", "server/errors.ts"],
  "server/serving": [
    "server/model",
    "server/prompts",
    "server/registry",
    "server/util",
    "server/errors.ts",
  ],
  "server/training": [
    "server/model",
    "server/prompts",
    "server/registry",
    "server/util",
    "server/errors.ts",
  ],
  // Evaluations: served answers scored, run as jobs of the training queue, kept in the registry.
  "server/evaluation": [
    "server/serving",
    "server/training",
    "server/model",
    "server/prompts",
    "server/registry",
    "server/util",
    "server/errors.ts",
  ],
  "server/rpc": [
    "proto",
    "server/evaluation",
    "server/training",
    "server/serving",
    "server/registry",
    "server/prompts",
    "server/util",
    "server/errors.ts",
    // The replica's role decides what the RPC layer answers (Infer, health names).
    "server/replica_role.ts",
  ],
  // An RPC interceptor: it reads the call shapes and the status mapping of rpc/.
  "server/telemetry": ["server/rpc/call.ts", "server/rpc/errors.ts", "server/errors.ts"],
  "client": ["proto"],
  "proto": [],
};

async function* modules(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(join(ROOT, dir))) {
    const p = join(dir, e.name);
    if (e.isDirectory && e.name !== "gen" && e.name !== "testdata") yield* modules(p);
    else if (e.isFile && e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) yield p;
  }
}

function importsOf(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?from\s+["']([^"']+)["']/g)) {
    out.push(m[1]);
  }
  for (const m of text.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)) out.push(m[1]);
  return out;
}

function owner(path: string): string | undefined {
  return Object.keys(ALLOWED).filter((f) => path === f || path.startsWith(f + "/"))
    .sort((a, b) => b.length - a.length)[0];
}

Deno.test("no module imports a layer above its own (and client/ imports nothing of server/)", async () => {
  const violations: string[] = [];
  for (const folder of Object.keys(ALLOWED)) {
    for await (const file of modules(folder)) {
      const text = await Deno.readTextFile(join(ROOT, file));
      for (const spec of importsOf(text)) {
        if (!spec.startsWith(".")) continue; // npm packages and builtins
        const target = relative(ROOT, resolve(dirname(join(ROOT, file)), spec));
        if (owner(target) === folder) continue;
        const ok = ALLOWED[folder].some((a) => target === a || target.startsWith(a + "/"));
        if (!ok) violations.push(`${file} imports ${target}`);
      }
    }
  }
  assertEquals(violations, []);
});

Deno.test("only the startup module and the commands import the composition root", async () => {
  const roots = ["server/bootstrap.ts", "server/services.ts", "server/main.ts"];
  const violations: string[] = [];
  for (const folder of Object.keys(ALLOWED)) {
    for await (const file of modules(folder)) {
      const text = await Deno.readTextFile(join(ROOT, file));
      for (const spec of importsOf(text)) {
        if (!spec.startsWith(".")) continue;
        const target = relative(ROOT, resolve(dirname(join(ROOT, file)), spec));
        if (roots.includes(target)) violations.push(`${file} imports ${target}`);
      }
    }
  }
  assertEquals(violations, []);
});

Deno.test("no production module imports test tooling (testing/ folders, test/)", async () => {
  const isTooling = (p: string) => p.startsWith("test/") || p.split("/").includes("testing");
  const violations: string[] = [];
  for (const folder of Object.keys(ALLOWED)) {
    for await (const file of modules(folder)) {
      if (isTooling(file)) continue;
      const text = await Deno.readTextFile(join(ROOT, file));
      for (const spec of importsOf(text)) {
        if (!spec.startsWith(".")) continue;
        const target = relative(ROOT, resolve(dirname(join(ROOT, file)), spec));
        if (isTooling(target)) violations.push(`${file} imports ${target}`);
      }
    }
  }
  assertEquals(violations, []);
});
