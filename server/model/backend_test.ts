import { assert, assertRejects } from "../../test/assert.ts";
import { createEngine, loadModel } from "./mod.ts";

const model = await loadModel(new URL("../../models/tiny-gpt2", import.meta.url).pathname);

Deno.test("createEngine() refuses an unknown backend, naming the choices", async () => {
  await assertRejects(
    () => createEngine(model, { backend: "gpu" }),
    RangeError,
    'backend must be one of auto, fast, onednn, cuda, wasm, cpu, tensorflow: found "gpu"',
  );
});

Deno.test("createEngine()'s default, auto, is onednn where its shim loads and fast elsewhere", async () => {
  let shim = true;
  try {
    (await import("./onednn/lib.ts")).loadOnednn();
  } catch {
    shim = false;
  }
  if (Deno.env.get("ONEDNN_TEST") === "required") assert(shim, "the oneDNN shim must load here");
  const engine = await createEngine(model);
  try {
    assert(engine.name.startsWith(shim ? "onednn(" : "fast("), engine.name);
  } finally {
    engine.dispose();
  }
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
