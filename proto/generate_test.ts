import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { assertEquals } from "../test/assert.ts";
import { generate } from "./generate.ts";

const committed = fileURLToPath(new URL("./gen/", import.meta.url));

async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      if (e.isDirectory) await walk(p);
      else out.set(relative(dir, p), await Deno.readTextFile(p));
    }
  };
  await walk(dir);
  return out;
}

Deno.test("proto/gen is what `deno task gen` makes from proto/ (no stale or machine-specific file)", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    await generate(join(tmp, "gen"));
    const fresh = await snapshot(join(tmp, "gen"));
    const have = await snapshot(committed);
    assertEquals([...have.keys()].sort(), [...fresh.keys()].sort(), "generated file names");
    for (const [name, text] of fresh) {
      assertEquals(have.get(name), text, `proto/gen/${name} is stale: run deno task gen`);
    }
    for (const text of have.values()) {
      const m = /^\/\/ Original file: (.+)$/m.exec(text);
      // google/protobuf types come from proto-loader itself and name no file ("null").
      if (m && m[1] !== "null") {
        assertEquals(m[1].startsWith("proto/"), true, `repository-relative path: ${m[1]}`);
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
