/** The walk-through's configs load, and every dataset they name is there under DATA_DIR's default. */
import { join } from "node:path";
import { DEFAULT_DATA_DIR } from "../server/bootstrap.ts";
import { loadTrainingConfig } from "../server/training/config.ts";
import { assert } from "./assert.ts";

const EXAMPLES = new URL("../examples/", import.meta.url).pathname;

Deno.test("examples/*.yaml load, and their dataset paths resolve inside the default DATA_DIR", async () => {
  let checked = 0;
  for await (const e of Deno.readDir(EXAMPLES)) {
    if (!e.name.endsWith(".yaml")) continue;
    const { config } = await loadTrainingConfig(join(EXAMPLES, e.name));
    for (const f of [...config.model.data.train_ds, ...config.model.data.validation_ds]) {
      const st = await Deno.stat(join(DEFAULT_DATA_DIR, f)).catch(() => null);
      assert(st?.isFile, `${e.name}: ${f} is not a file under ${DEFAULT_DATA_DIR}`);
      checked++;
    }
  }
  assert(checked >= 4, `only ${checked} dataset paths checked`);
});
