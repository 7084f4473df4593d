/** The shim's build step: what it says when oneDNN is missing, and that it rebuilds only on change. */
import { assert, assertEquals, assertRejects } from "../../../test/assert.ts";
import { buildShim, DNNL_HEADER } from "./build.ts";

Deno.test("buildShim() names the Debian packages when oneDNN's header is missing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(
      () => buildShim({ out: `${dir}/lib.so`, header: `${dir}/no/dnnl.h`, quiet: true }),
      Error,
      "install the Debian packages libdnnl-dev and libdnnl2",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

let canBuild = true;
try {
  Deno.statSync(DNNL_HEADER);
} catch {
  canBuild = false;
}

Deno.test({
  name: "buildShim() compiles once and then finds the library up to date",
  ignore: !canBuild,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const out = await buildShim({ out: `${dir}/lib.so`, quiet: true });
      const first = (await Deno.stat(out)).mtime!.getTime();
      assert((await Deno.stat(out)).size > 0);
      await buildShim({ out, quiet: true });
      assertEquals((await Deno.stat(out)).mtime!.getTime(), first);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
