import { assertRejects } from "../../test/assert.ts";
import { createEngine, loadModel } from "./mod.ts";

const model = await loadModel(new URL("../../models/tiny-gpt2", import.meta.url).pathname);

Deno.test("createEngine() refuses an unknown backend, naming the choices", async () => {
  await assertRejects(
    () => createEngine(model, { backend: "gpu" }),
    RangeError,
    'backend must be one of fast, onednn, cuda, wasm, cpu, tensorflow: found "gpu"',
  );
});

Deno.test("createEngine() says which backend cannot load and why when tfjs-node is absent", async () => {
  let installed = true;
  try {
    await import("node:module").then((m) =>
      m.createRequire(import.meta.url).resolve("@tensorflow/tfjs-node")
    );
  } catch {
    installed = false;
  }
  if (installed) return; // where tfjs-node installs, the backend loads instead
  await assertRejects(
    () => createEngine(model, { backend: "tensorflow" }),
    Error,
    'backend "tensorflow" cannot be loaded: ',
  );
});
