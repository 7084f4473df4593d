import { ServiceError } from "../errors.ts";
import { asGpt2 } from "./weights.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "../../test/assert.ts";
import { parseGpt2Config } from "./gpt2_config.ts";
import { loadModel } from "./loader.ts";
import { isPacked, matrixLength, toFloat32 } from "./half.ts";
import {
  encodeSafetensors,
  parseSafetensors,
  readFloat32,
  type TensorToWrite,
} from "./safetensors.ts";

const root = new URL("../../", import.meta.url).pathname;

/** A tiny random GPT-2 (1 layer, 8 wide, 16 tokens) as HF would store it. */
function tinyCheckpoint(prefix = "transformer."): Record<string, TensorToWrite> {
  const C = 8, V = 16, P = 32;
  let seed = 1;
  const rnd = (n: number) =>
    Float32Array.from(
      { length: n },
      () => ((seed = (seed * 16807) % 2147483647) / 2147483647) - 0.5,
    );
  const t = (shape: number[]): TensorToWrite => ({
    dtype: "F32",
    shape,
    data: rnd(shape.reduce((a, b) => a * b, 1)),
  });
  const w: Record<string, TensorToWrite> = {
    [`${prefix}wte.weight`]: t([V, C]),
    [`${prefix}wpe.weight`]: t([P, C]),
    [`${prefix}ln_f.weight`]: t([C]),
    [`${prefix}ln_f.bias`]: t([C]),
  };
  const l = `${prefix}h.0.`;
  Object.assign(w, {
    [l + "ln_1.weight"]: t([C]),
    [l + "ln_1.bias"]: t([C]),
    [l + "attn.c_attn.weight"]: t([C, 3 * C]),
    [l + "attn.c_attn.bias"]: t([3 * C]),
    [l + "attn.c_proj.weight"]: t([C, C]),
    [l + "attn.c_proj.bias"]: t([C]),
    [l + "ln_2.weight"]: t([C]),
    [l + "ln_2.bias"]: t([C]),
    [l + "mlp.c_fc.weight"]: t([C, 4 * C]),
    [l + "mlp.c_fc.bias"]: t([4 * C]),
    [l + "mlp.c_proj.weight"]: t([4 * C, C]),
    [l + "mlp.c_proj.bias"]: t([C]),
  });
  return w;
}

const tinyConfig = {
  model_type: "gpt2",
  vocab_size: 16,
  n_positions: 32,
  n_embd: 8,
  n_layer: 1,
  n_head: 2,
  layer_norm_epsilon: 1e-5,
  activation_function: "gelu_new",
};

async function writeModel(
  dir: string,
  files: Record<string, Uint8Array>,
  config: unknown = tinyConfig,
) {
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  for (const [name, bytes] of Object.entries(files)) await Deno.writeFile(`${dir}/${name}`, bytes);
}

Deno.test("loadModel() reads the shipped float16 tiny-gpt2 and fingerprints it", async () => {
  const m = asGpt2(await loadModel(`${root}models/tiny-gpt2`));
  assertEquals(m.config.nLayer, 6);
  assertEquals(matrixLength(m.weights.wte), 50257 * 256);
  // Stored float16, kept float16 in memory (half the bytes of a widened copy).
  assert(isPacked(m.weights.wte) && m.weights.wte.dtype === "f16");
  // Pinned: registered tasks carry this fingerprint, so how the weights are loaded (mapped,
  // read, decoded) must never change it. Value from the loader before memory mapping.
  const pinned = "419eea9f07222efa8c1a442dc8dfebac0f7a93ed4df2f201ecd8320471cb7689";
  assertEquals(m.weightsHash, pinned);
  assertEquals(
    (asGpt2(await loadModel(`${root}models/tiny-gpt2`, { map: false }))).weightsHash,
    pinned,
  );
});

Deno.test("loadModel() accepts keys without the transformer. prefix and sharded checkpoints alike", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const plain = tinyCheckpoint("");
    await writeModel(dir, { "model.safetensors": encodeSafetensors(plain) });
    const a = asGpt2(await loadModel(dir));
    await Deno.remove(`${dir}/model.safetensors`);
    // The same tensors split over two shards with an index.
    const names = Object.keys(plain).sort();
    const half = Math.floor(names.length / 2);
    const shard = (ns: string[]) =>
      Object.fromEntries(ns.map((n) => [`transformer.${n}`, plain[n]]));
    const s1 = names.slice(0, half), s2 = names.slice(half);
    await writeModel(dir, {
      "model-00001-of-00002.safetensors": encodeSafetensors(shard(s1)),
      "model-00002-of-00002.safetensors": encodeSafetensors(shard(s2)),
    });
    const weightMap = Object.fromEntries([
      ...s1.map((n) => [`transformer.${n}`, "model-00001-of-00002.safetensors"]),
      ...s2.map((n) => [`transformer.${n}`, "model-00002-of-00002.safetensors"]),
    ]);
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: weightMap }),
    );
    const b = asGpt2(await loadModel(dir));
    assertEquals(a.weightsHash, b.weightsHash);
    assertEquals(toFloat32(b.weights.layers[0].fcW), plain["h.0.mlp.c_fc.weight"].data);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readFloat32() widens F16 and BF16 exactly", () => {
  // 1.0, -2.0, 0.5 in F16 (0x3c00, 0xc000, 0x3800) and BF16 (0x3f80, 0xc000, 0x3f00)
  const make = (dtype: string, halves: number[]) => {
    const header = JSON.stringify({ x: { dtype, shape: [3], data_offsets: [0, 6] } });
    const bytes = new Uint8Array(8 + header.length + 6);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true);
    bytes.set(new TextEncoder().encode(header), 8);
    const dv = new DataView(bytes.buffer, 8 + header.length);
    halves.forEach((h, i) => dv.setUint16(i * 2, h, true));
    return parseSafetensors(bytes, `${dtype}.safetensors`);
  };
  assertEquals(Array.from(readFloat32(make("F16", [0x3c00, 0xc000, 0x3800]), "x")), [1, -2, 0.5]);
  assertEquals(Array.from(readFloat32(make("BF16", [0x3f80, 0xc000, 0x3f00]), "x")), [1, -2, 0.5]);
});

Deno.test("parseSafetensors() refuses a header that lies about sizes or dtypes, naming file and tensor", () => {
  const good = encodeSafetensors({ w: { dtype: "F32", shape: [2, 2], data: new Float32Array(4) } });
  const withHeader = (h: unknown) => {
    const json = JSON.stringify(h);
    const out = new Uint8Array(8 + json.length + 16);
    new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
    out.set(new TextEncoder().encode(json), 8);
    return out;
  };
  assertEquals(parseSafetensors(good, "ok.safetensors").tensors.get("w")!.shape, [2, 2]);
  assertThrows(
    () =>
      parseSafetensors(
        withHeader({ w: { dtype: "F32", shape: [3, 2], data_offsets: [0, 16] } }),
        "m.safetensors",
      ),
    ServiceError,
    `m.safetensors: tensor "w" (F32 [3,2]) needs 24 bytes: data_offsets [0, 16] give 16`,
  );
  assertThrows(
    () =>
      parseSafetensors(
        withHeader({ w: { dtype: "Q4", shape: [4], data_offsets: [0, 16] } }),
        "m.safetensors",
      ),
    ServiceError,
    `tensor "w" has dtype "Q4"`,
  );
  assertThrows(
    () =>
      parseSafetensors(
        withHeader({ w: { dtype: "F32", shape: [8], data_offsets: [0, 32] } }),
        "m.safetensors",
      ),
    ServiceError,
    "ends at byte 32 of the data section: only 16 bytes exist",
  );
  const lying = new Uint8Array(good);
  new DataView(lying.buffer).setBigUint64(0, 1n << 40n, true);
  assertThrows(
    () => parseSafetensors(lying, "big.safetensors"),
    ServiceError,
    "big.safetensors: header length",
  );
});

Deno.test("loadModel() names file, key, expected and found shape for a wrong-shaped tensor", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const w = tinyCheckpoint();
    w["transformer.h.0.attn.c_attn.weight"] = {
      dtype: "F32",
      shape: [8, 16],
      data: new Float32Array(128),
    };
    await writeModel(dir, { "model.safetensors": encodeSafetensors(w) });
    await assertRejects(
      () => loadModel(dir),
      RangeError,
      `model.safetensors: tensor "transformer.h.0.attn.c_attn.weight" must have shape [8,24] for this config: found [8,16]`,
    );
    delete w["transformer.h.0.attn.c_attn.weight"];
    await writeModel(dir, { "model.safetensors": encodeSafetensors(w) });
    await assertRejects(() => loadModel(dir), RangeError, `has no tensor "h.0.attn.c_attn.weight"`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadModel() refuses a missing or malformed config.json naming the file and key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(() => loadModel(dir), Deno.errors.NotFound, "config.json: file not found");
    await Deno.writeTextFile(`${dir}/config.json`, "{ not json");
    await assertRejects(() => loadModel(dir), ServiceError, "config.json: not valid JSON");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assertThrows(
    () => parseGpt2Config(JSON.stringify({ ...tinyConfig, n_head: 3 })),
    RangeError,
    "n_embd (8) must be divisible by n_head (3)",
  );
  assertThrows(
    () => parseGpt2Config(JSON.stringify({ ...tinyConfig, n_layer: 0 })),
    RangeError,
    "config.json: n_layer must be a positive integer: found 0",
  );
  assertThrows(
    () => parseGpt2Config(JSON.stringify({ ...tinyConfig, model_type: "llama" })),
    RangeError,
    `model_type must be "gpt2"`,
  );
});
