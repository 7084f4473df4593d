/**
 * Loading GPT-2 family checkpoints as Hugging Face stores them, on checkpoints generated here with
 * the real key names, tensor shapes and dtypes of `gpt2` and `gpt2-medium` (random weights; fewer
 * layers than the real models to keep the test small: every width, the vocabulary and the
 * positions are the real ones). Each is cross-checked between engines (fast, and oneDNN fp32 when
 * built): the same logits from the same loaded weights.
 */
import { asGpt2 } from "./weights.ts";
import { assert, assertEquals } from "../../test/assert.ts";
import type { Engine } from "./engine.ts";
import { createFastEngine } from "./fast/fast_engine.ts";
import { loadModel } from "./loader.ts";
import {
  GPT2_SHAPES,
  randomGpt2,
  writeHfCheckpoint,
  type WriteOptions,
} from "./testing/gpt2_checkpoint.ts";
import { checkTokenizerMatchesModel, loadTokenizer } from "./tokenizer.ts";
import type { LoadedModel } from "./weights.ts";
import { isPacked, type Matrix, toBf16Bits, toF16Bits, toFloat32 } from "./half.ts";

let onednn: ((m: LoadedModel) => Engine) | null = null;
try {
  const { createOnednnEngine } = await import("./onednn/onednn_engine.ts");
  const { loadOnednn } = await import("./onednn/lib.ts");
  loadOnednn();
  onednn = (m) => createOnednnEngine(m, { precision: "fp32" });
} catch {
  // Not built here: the fast engine alone reads the checkpoints.
}

function rounded(x: Float32Array, dtype: "F32" | "F16" | "BF16"): Float32Array {
  if (dtype === "F32") return x;
  const out = new Float32Array(x.length);
  const u = new Uint32Array(out.buffer);
  if (dtype === "BF16") {
    for (let i = 0; i < x.length; i++) u[i] = toBf16Bits(x[i]) << 16;
    return out;
  }
  const f = new Float32Array(1), h = new Uint16Array(1);
  const half = (bits: number) => {
    const s = bits & 0x8000 ? -1 : 1, e = (bits >> 10) & 31, m = bits & 1023;
    return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
  };
  for (let i = 0; i < x.length; i++) {
    h[0] = toF16Bits(x[i]);
    f[0] = half(h[0]);
    out[i] = f[0];
  }
  return out;
}

function firstMismatch(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return -2;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Both engines on the loaded model: the logits of a few rows at the given positions agree. */
async function crossCheck(m: LoadedModel, positions: Int32Array) {
  const T = positions.length;
  const ids = Int32Array.from({ length: T }, (_, i) => (i * 7919 + 11) % m.config.vocabSize);
  const engines: Engine[] = [createFastEngine(m, { blas: null })];
  if (onednn) engines.push(onednn(m));
  const outs: Float32Array[] = [];
  for (const e of engines) {
    const { logits } = await e.forward({
      embeds: e.embed(ids),
      seqs: [{ length: T }],
      positions,
      logitRows: Int32Array.of(0, T - 1),
    });
    assert(logits.every(Number.isFinite), `${e.name}: non-finite logits`);
    outs.push(logits);
    e.dispose();
  }
  for (let k = 1; k < outs.length; k++) {
    let err = 0, big = 0;
    for (let i = 0; i < outs[0].length; i++) {
      err = Math.max(err, Math.abs(outs[k][i] - outs[0][i]));
      big = Math.max(big, Math.abs(outs[0][i]));
    }
    assert(err < 1e-4 * Math.max(1, big), `${engines[k].name} vs ${engines[0].name}: ${err}`);
  }
}

interface Case {
  name: string;
  shape: keyof typeof GPT2_SHAPES;
  layers: number;
  nPositions?: number;
  untied?: boolean;
  write: WriteOptions & { dtype: "F32" | "F16" | "BF16" };
  /** Files the checkpoint directory must hold (the layout under test). */
  files: string[];
}

const cases: Case[] = [
  {
    // The `gpt2` repository: bare keys, float32, attn.bias/masked_bias buffers, tied head,
    // vocab.json + merges.txt.
    name: "gpt2 layout: bare keys, F32, mask buffers, tied head, vocab.json + merges.txt",
    shape: "gpt2",
    layers: 2,
    write: { dtype: "F32", prefix: false, buffers: true, tokenizer: "vocab" },
    files: ["config.json", "model.safetensors", "vocab.json", "merges.txt"],
  },
  {
    // save_pretrained of gpt2-medium in half precision, sharded, with a boolean mask buffer,
    // tokenizer.json and 2048 positions.
    name: "gpt2-medium layout: transformer. keys, F16, 3 shards, BOOL mask, tokenizer.json, " +
      "n_positions 2048",
    shape: "gpt2-medium",
    layers: 1,
    nPositions: 2048,
    write: { dtype: "F16", prefix: true, buffers: "BOOL", shards: 3, tokenizer: "json" },
    files: [
      "config.json",
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      "model.safetensors.index.json",
      "tokenizer.json",
    ],
  },
  {
    name: "gpt2 shapes in BF16 with transformer. keys and a separate lm_head",
    shape: "gpt2",
    layers: 1,
    untied: true,
    write: { dtype: "BF16", prefix: true },
    files: ["config.json", "model.safetensors"],
  },
];

for (const c of cases) {
  Deno.test(`loadModel() reads a ${c.name}`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "hf-ckpt-" });
    try {
      let made: LoadedModel | null = randomGpt2(GPT2_SHAPES[c.shape], {
        layers: c.layers,
        nPositions: c.nPositions,
        untied: c.untied,
        seed: 7,
      });
      await writeHfCheckpoint(dir, made, c.write);
      const present = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      assertEquals(present, [...c.files].sort());
      const loaded = asGpt2(await loadModel(dir));
      const s = GPT2_SHAPES[c.shape];
      assertEquals(
        [loaded.config.nEmbd, loaded.config.nHead, loaded.config.vocabSize],
        [s.nEmbd, s.nHead, s.vocabSize],
      );
      assertEquals(loaded.config.nPositions, c.nPositions ?? s.nPositions);
      assertEquals(loaded.config.tieWordEmbeddings, !c.untied);
      assertEquals(loaded.weights.lmHead !== undefined, c.untied === true);
      // Every tensor is the written one, rounded to the stored dtype and widened exactly.
      const pairs: Array<[string, Matrix, Matrix]> = [
        ["wte", made.weights.wte, loaded.weights.wte],
        ["wpe", made.weights.wpe, loaded.weights.wpe],
        ["ln_f.weight", made.weights.lnFG, loaded.weights.lnFG],
      ];
      if (c.untied) pairs.push(["lm_head", made.weights.lmHead!, loaded.weights.lmHead!]);
      made.weights.layers.forEach((l, i) => {
        for (const k of Object.keys(l) as (keyof typeof l)[]) {
          pairs.push([`h.${i}.${k}`, l[k], loaded.weights.layers[i][k]]);
        }
      });
      // Matrices stay in the stored dtype; vectors and positions are widened.
      const stored =
        ({ F32: undefined, F16: "f16", BF16: "bf16" } as const)[c.write.dtype ?? "F32"];
      for (const [name, want, got] of pairs) {
        const isMatrix = /wte|lm_head|W$/.test(name);
        assertEquals(isPacked(got) ? got.dtype : undefined, isMatrix ? stored : undefined, name);
        const at = firstMismatch(rounded(toFloat32(want), c.write.dtype ?? "F32"), toFloat32(got));
        assertEquals(at, -1, `${name} differs at ${at}`);
      }
      made = null; // only the loaded copy from here on
      if (c.write.tokenizer) {
        const tok = await loadTokenizer(dir);
        checkTokenizerMatchesModel(tok, loaded.config.vocabSize, dir);
        assertEquals(tok.vocabSize, s.vocabSize);
      }
      const P = loaded.config.nPositions;
      await crossCheck(loaded, Int32Array.from({ length: 6 }, (_, i) => P - 6 + i));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
