import { ServiceError } from "../errors.ts";
import { join } from "node:path";
import { encodeSafetensors, parseSafetensors, readFloat32 } from "../model/safetensors.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "../../test/assert.ts";
import { DiskTaskStore } from "./disk_store.ts";
import {
  encodePeftAdapter,
  exportPeftAdapter,
  importPeftAdapter,
  parsePeftAdapter,
  type PeftAdapterFiles,
} from "./peft.ts";
import type { ModelFingerprint } from "./types.ts";

const FIXTURE = new URL("../../test/fixtures/peft_prompt_tuning_sentiment/", import.meta.url)
  .pathname;
const CONFIG = await Deno.readTextFile(join(FIXTURE, "adapter_config.json"));
const WEIGHTS = await Deno.readFile(join(FIXTURE, "adapter_model.safetensors"));
const FP: ModelFingerprint = { hiddenSize: 256, vocabSize: 50257, weightsHash: "c".repeat(64) };
const OPTS = {
  name: "sentiment",
  fingerprint: FP,
  promptTemplate: " {sentence} sentiment: {label}",
};
/** What the reference adapter's config says, so that export reproduces it byte for byte. */
const REF_EXPORT = {
  baseModelNameOrPath: "tiny-gpt2",
  tokenizerNameOrPath: "tiny-gpt2",
  numLayers: 6,
  numAttentionHeads: 8,
  promptTuningInit: "TEXT",
  promptTuningInitText: "Classify the sentiment of this financial news sentence",
} as const;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "registry_peft_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function files(config: Record<string, unknown>, weights: Uint8Array = WEIGHTS): PeftAdapterFiles {
  return { configJson: JSON.stringify(config), safetensorsBytes: weights, where: "adapter" };
}

const refConfig = () => JSON.parse(CONFIG) as Record<string, unknown>;

/** A hand-made safetensors file with one 16-bit tensor (encodeSafetensors writes only F32/I32). */
function halfFile(dtype: "F16" | "BF16", shape: number[], halves: Uint16Array): Uint8Array {
  let header = JSON.stringify({
    prompt_embeddings: { dtype, shape, data_offsets: [0, halves.byteLength] },
  });
  while ((8 + header.length) % 8) header += " ";
  const out = new Uint8Array(8 + header.length + halves.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.length), true);
  out.set(new TextEncoder().encode(header), 8);
  out.set(new Uint8Array(halves.buffer), 8 + header.length);
  return out;
}

Deno.test("importPeftAdapter() reads the reference PEFT adapter into a draft", async () => {
  const d = await importPeftAdapter(FIXTURE, OPTS);
  assertEquals([d.totalVirtualTokens, d.hiddenSize, d.source], [10, 256, "peft_import"]);
  const st = parseSafetensors(WEIGHTS, "ref");
  assertEquals(d.table, readFloat32(st, "prompt_embeddings"));
  assertEquals(d.template.prompt_template, "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}");
  assertEquals(d.template.prompt_template_fields, ["sentence", "label"]);
  assertEquals(d.template.answer_field, "label");
  assertEquals(d.template.virtual_token_splits, [10]);
  assertEquals(d.template.taskname, "sentiment");
  assertEquals(d.fingerprint, FP);
});

Deno.test("importPeftAdapter() defaults the template to <|VIRTUAL_PROMPT_0|>{prompt}{completion}", async () => {
  const d = await importPeftAdapter({ configJson: CONFIG, safetensorsBytes: WEIGHTS }, {
    name: "x",
    fingerprint: FP,
    template: { add_eos: false, max_seq_length: 512 },
  });
  assertEquals(d.template.prompt_template, "<|VIRTUAL_PROMPT_0|>{prompt}{completion}");
  assertEquals(d.template.answer_field, "completion");
  assertEquals([d.template.add_eos, d.template.max_seq_length], [false, 512]);
});

Deno.test("exportPeftAdapter() of an imported adapter writes the reference files byte for byte", async () => {
  await withDir(async (dir) => {
    const d = await importPeftAdapter(FIXTURE, OPTS);
    await exportPeftAdapter(d, dir, REF_EXPORT);
    assertEquals(await Deno.readTextFile(join(dir, "adapter_config.json")), CONFIG);
    assertEquals(await Deno.readFile(join(dir, "adapter_model.safetensors")), WEIGHTS);
    assertEquals((await Array.fromAsync(Deno.readDir(dir))).length, 2); // no temp files left
  });
});

Deno.test("a stored version exported and imported again has the identical table bytes", async () => {
  await withDir(async (dir) => {
    const store = await DiskTaskStore.open(join(dir, "store"), { fingerprint: FP });
    const table = Float32Array.from({ length: 3 * 256 }, (_, i) => Math.sin(i) * 1e-3 + i);
    const draft = await importPeftAdapter(
      encodePeftAdapter({ table, totalVirtualTokens: 3, hiddenSize: 256 }),
      { name: "rt", fingerprint: FP },
    );
    const stored = await store.put("rt", { ...draft, source: "prompt_tuning" });
    await exportPeftAdapter(await store.get("rt"), join(dir, "out"));
    const config = JSON.parse(await Deno.readTextFile(join(dir, "out", "adapter_config.json")));
    assertEquals(
      [config.peft_type, config.task_type, config.num_virtual_tokens, config.token_dim],
      ["PROMPT_TUNING", "CAUSAL_LM", 3, 256],
    );
    assertEquals([config.prompt_tuning_init, config.base_model_name_or_path], ["RANDOM", null]);
    const back = await importPeftAdapter(join(dir, "out"), { name: "rt", fingerprint: FP });
    const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    assertEquals(bytes(back.table), bytes(table));
    assertEquals((await store.put("rt", back)).checksum, stored.checksum);
  });
});

Deno.test("a p-tuned version exports its table whatever its encoder kind, NeMo-only ones included", async () => {
  // PEFT saves a P_TUNING adapter as its materialised table too, so the encoder is not part of
  // an adapter and every kind exports exactly.
  await withDir(async (dir) => {
    const store = await DiskTaskStore.open(join(dir, "store"), { fingerprint: FP });
    const table = Float32Array.from({ length: 2 * 256 }, (_, i) => Math.cos(i));
    const base = await importPeftAdapter(
      encodePeftAdapter({ table, totalVirtualTokens: 2, hiddenSize: 256 }),
      { name: "pt", fingerprint: FP },
    );
    for (const kind of ["tpmlp", "mlp", "lstm", "peft_mlp"] as const) {
      await store.put("pt", {
        ...base,
        source: "p_tuning",
        encoderState: {
          kind,
          config: {},
          tensors: { "embedding.weight": { shape: [2, 256], data: table.slice() } },
        },
      });
      const out = join(dir, kind);
      await exportPeftAdapter(await store.get("pt"), out);
      const back = await importPeftAdapter(out, { name: "pt", fingerprint: FP });
      assertEquals(back.table, table, kind);
      assert(back.encoderState === undefined);
    }
  });
});

Deno.test("importPeftAdapter() widens F16 and BF16 prompt_embeddings and accepts P_TUNING", () => {
  // 1.5 = 0x3e00 (F16) = 0x3fc0 (BF16); -2 = 0xc000 (F16) = 0xc000 (BF16).
  const cfg = { ...refConfig(), num_virtual_tokens: 1, token_dim: 2 };
  const fp = { ...FP, hiddenSize: 2 };
  const f16 = parsePeftAdapter(
    files(cfg, halfFile("F16", [1, 2], Uint16Array.of(0x3e00, 0xc000))),
    { name: "h", fingerprint: fp },
  );
  assertEquals(f16.table, Float32Array.of(1.5, -2));
  const bf16 = parsePeftAdapter(
    files(
      { ...cfg, peft_type: "P_TUNING" },
      halfFile("BF16", [1, 2], Uint16Array.of(0x3fc0, 0xc000)),
    ),
    { name: "h", fingerprint: fp },
  );
  assertEquals(bf16.table, Float32Array.of(1.5, -2));
});

Deno.test("importPeftAdapter() refuses bad adapters, naming the file and the key", async () => {
  const opts = { name: "t", fingerprint: FP };
  const cases: [string, PeftAdapterFiles, string][] = [
    [
      "not JSON",
      { configJson: "{", safetensorsBytes: WEIGHTS },
      "adapter_config.json: not valid JSON",
    ],
    [
      "LoRA",
      files({ ...refConfig(), peft_type: "LORA" }),
      'peft_type must be "PROMPT_TUNING" or "P_TUNING": found "LORA"',
    ],
    [
      "seq cls",
      files({ ...refConfig(), task_type: "SEQ_CLS" }),
      'adapter/adapter_config.json: task_type must be "CAUSAL_LM"',
    ],
    [
      "no tokens",
      files({ ...refConfig(), num_virtual_tokens: 0 }),
      "num_virtual_tokens must be a positive integer: found 0",
    ],
    [
      "wrong dim",
      files({ ...refConfig(), token_dim: 768 }),
      "adapter/adapter_config.json: token_dim (768) must equal the model's hidden size (256)",
    ],
    [
      "seq2seq",
      files({ ...refConfig(), num_transformer_submodules: 2 }),
      "num_transformer_submodules must be 1",
    ],
    [
      "shape",
      files({ ...refConfig(), num_virtual_tokens: 9 }),
      'adapter/adapter_model.safetensors: tensor "prompt_embeddings" has shape [10,256]: expected [9,256]',
    ],
    [
      "no tensor",
      files(
        refConfig(),
        encodeSafetensors({ embeddings: { dtype: "F32", shape: [1], data: new Float32Array(1) } }),
      ),
      'adapter/adapter_model.safetensors: no tensor "prompt_embeddings": found ["embeddings"]',
    ],
    [
      "integer",
      files(
        refConfig(),
        encodeSafetensors({
          prompt_embeddings: { dtype: "I32", shape: [10, 256], data: new Int32Array(2560) },
        }),
      ),
      'adapter/adapter_model.safetensors: tensor "prompt_embeddings" must be F32, F16 or BF16: found I32',
    ],
    [
      "truncated",
      files(refConfig(), WEIGHTS.subarray(0, 5000)),
      'adapter/adapter_model.safetensors: tensor "prompt_embeddings" ends at byte 10240',
    ],
  ];
  for (const [label, f, text] of cases) {
    const e = await assertRejects(() => importPeftAdapter(f, opts), Error, text);
    assert(
      e instanceof ServiceError || e instanceof ServiceError || e instanceof ServiceError,
      label,
    );
  }
  const nan = WEIGHTS.slice();
  new DataView(nan.buffer).setFloat32(nan.length - 4 * 2, NaN, true);
  assertThrows(
    () => parsePeftAdapter(files(refConfig(), nan), opts),
    ServiceError,
    'tensor "prompt_embeddings" has NaN at [9, 254]: expected finite values',
  );
  assertThrows(
    () =>
      parsePeftAdapter(files(refConfig()), { ...opts, promptTemplate: "<|VIRTUAL_PROMPT_1|>{a}" }),
    ServiceError,
    "promptTemplate must hold one <|VIRTUAL_PROMPT_0|> marker",
  );
  assertThrows(
    () => parsePeftAdapter(files(refConfig()), { ...opts, promptTemplate: "no fields" }),
    ServiceError,
    "promptTemplate must name at least the answer field",
  );
  assertThrows(
    () => parsePeftAdapter(files(refConfig()), { ...opts, name: "../x" }),
    ServiceError,
    "name must match",
  );
});

Deno.test("importPeftAdapter() of a directory names a missing file, and a .bin-only adapter", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "adapter_config.json"), CONFIG);
    await assertRejects(
      () => importPeftAdapter(dir, { name: "t", fingerprint: FP }),
      Deno.errors.NotFound,
      `${join(dir, "adapter_model.safetensors")}: missing`,
    );
    await Deno.writeFile(join(dir, "adapter_model.bin"), new Uint8Array(4));
    await assertRejects(
      () => importPeftAdapter(dir, { name: "t", fingerprint: FP }),
      Deno.errors.NotFound,
      "found adapter_model.bin (a PyTorch pickle, not read here)",
    );
  });
});
