/**
 * The Llama-family engines against an independent PyTorch reference (test/python/llama_reference.py,
 * a float64 Llama written from Hugging Face's modeling code): checkpoints with random weights at
 * the real SmolLM2-135M and Qwen2.5-0.5B widths (heads, KV heads, head_dim; two layers and a 2048
 * vocabulary to stay small), a Llama 3 rope-scaled one, Llama's attention_bias, a head_dim that
 * is not hidden/heads, sharded and BF16 files. Checkpoint and reference are generated at test
 * time by the same script. Checked per engine: logits at every row, the prompt-tuning loss and
 * its input-embedding gradient, KV-cached greedy decoding, and a mixed batch of prompt tables of
 * different lengths.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { PYTHON, pythonMissing, requireTool } from "./support/required_tool.ts";
import { loadModel } from "../server/model/loader.ts";
import { parseSafetensors, readFloat32, readInt32 } from "../server/model/safetensors.ts";
import type { Engine } from "../server/model/engine.ts";
import { createTestEngine } from "../server/model/testing/engine_probe.ts";

const root = new URL("../", import.meta.url).pathname;
const SCRIPT = `${root}test/python/llama_reference.py`;

const tool = requireTool(
  await pythonMissing("torch, numpy", "python3-torch python3-numpy"),
  "llama_reference_test.ts",
);

/** Checkpoints: the script's shape and options. */
const CASES: [string, string[]][] = [
  ["smollm2-135m", ["--layers", "2", "--vocab", "2048"]],
  ["qwen2.5-0.5b", ["--layers", "2", "--vocab", "2048", "--shards", "2"]],
  ["llama3-tiny", []],
  ["tiny-bias", []],
  ["tiny-headdim", ["--dtype", "BF16"]],
];
const ENGINES = ["fast", "onednn", "fast-worker", "cuda-emulated"];

async function generate(shape: string, opts: string[], dir: string): Promise<void> {
  const out = await new Deno.Command(PYTHON, {
    args: [SCRIPT, "--shape", shape, "--out", dir, ...opts],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`llama_reference.py ${shape} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assertEquals(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const x of a) m = Math.max(m, Math.abs(x));
  return m;
}

/** Packed spans of the given lengths. */
const spans = (lengths: Int32Array) => Array.from(lengths, (length) => ({ length }));

for (const [shape, opts] of CASES) {
  Deno.test({
    name: `Llama reference ${shape} ${
      opts.join(" ")
    }: logits, loss and gradient, cached decoding, mixed batch on ${ENGINES.join(", ")}`,
    ignore: tool.ignore,
    async fn() {
      tool.check();
      const dir = await Deno.makeTempDir({ prefix: `llama-${shape}-` });
      const engines: [string, Engine][] = [];
      try {
        await generate(shape, opts, dir);
        const model = await loadModel(dir);
        assertEquals(model.config.arch, "llama");
        const ref = parseSafetensors(await Deno.readFile(`${dir}/reference.safetensors`), "ref");
        const f32 = (n: string) => readFloat32(ref, n);
        const i32 = (n: string) => readInt32(ref, n);
        const V = model.config.vocabSize;
        for (const name of ENGINES) {
          try {
            engines.push([name, await createTestEngine(name, model)]);
          } catch (e) {
            if (name !== "onednn" || Deno.env.get("ONEDNN_TEST") === "required") throw e;
          }
        }
        for (const [name, e] of engines) {
          const at = `${shape} [${name}]`;
          // Logits at every row of three plain sequences.
          const want = f32("logits.out");
          const lengths = i32("logits.lengths");
          const N = lengths.reduce((n, l) => n + l, 0);
          const { logits } = await e.forward({
            embeds: f32("logits.inputs_embeds"),
            seqs: spans(lengths),
            logitRows: Int32Array.from({ length: N }, (_, i) => i),
          });
          const scale = Math.max(1, maxAbs(want));
          const err = maxAbsDiff(logits, want);
          assert(err < 1e-4 * scale, `${at} logits: max abs error ${err} (scale ${scale})`);

          // Prompt-tuning loss and the gradient of every input row.
          const g = await e.lossAndGrad({
            embeds: f32("grad.inputs_embeds"),
            seqs: spans(i32("grad.lengths")),
            lossRows: i32("grad.loss_rows"),
            targets: i32("grad.targets"),
          });
          const loss = f32("grad.loss")[0];
          assert(
            Math.abs(g.loss - loss) < 1e-4 * Math.max(1, loss),
            `${at} loss ${g.loss} vs ${loss}`,
          );
          const wantGrad = f32("grad.grad");
          const gErr = maxAbsDiff(g.gradEmbeds, wantGrad);
          const gScale = maxAbs(wantGrad);
          assert(
            gErr < 1e-3 * gScale,
            `${at} gradient: max abs error ${gErr} vs bound ${1e-3 * gScale}`,
          );

          // Greedy decoding with a KV cache, both prompts in one batch.
          const pl = i32("decode.prompt_lengths");
          const pe = f32("decode.prompt_embeds");
          const tokens = i32("decode.tokens"), stepLogits = f32("decode.logits");
          const margin = f32("decode.margin");
          const K = tokens.length / pl.length;
          const caches = Array.from(pl, () => e.newCache());
          let last = 0;
          const lastRows = Int32Array.from(pl, (l) => (last += l) - 1);
          let out = await e.forward({
            embeds: pe,
            seqs: Array.from(pl, (length, s) => ({ length, cache: caches[s] })),
            logitRows: lastRows,
          });
          const C = model.config.nEmbd;
          for (let k = 0; k < K; k++) {
            const next: number[] = [];
            for (let s = 0; s < pl.length; s++) {
              const row = out.logits.subarray(s * V, (s + 1) * V);
              const w = stepLogits.subarray((s * K + k) * V, (s * K + k + 1) * V);
              const dErr = maxAbsDiff(row, w);
              assert(dErr < 1e-4 * Math.max(1, maxAbs(w)), `${at} decode ${s}.${k}: error ${dErr}`);
              let best = 0;
              for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
              // A near-tie may break either way; beyond it the reference's token is ours.
              if (margin[s * K + k] > 1e-3) {
                assertEquals(best, tokens[s * K + k], `${at} token ${s}.${k}`);
              }
              next.push(tokens[s * K + k]);
            }
            if (k === K - 1) break;
            out = await e.forward({
              embeds: e.embed(next),
              seqs: caches.map((cache) => ({ length: 1, cache })),
              logitRows: Int32Array.from(next.keys()),
            });
          }
          for (const c of caches) c.dispose();
          assertEquals(C, e.config.nEmbd);

          // Three prompt tables of different lengths in one batch.
          const mixed = await e.forward({
            embeds: f32("mixed.inputs_embeds"),
            seqs: spans(i32("mixed.lengths")),
            logitRows: i32("mixed.last_rows"),
          });
          const wm = f32("mixed.logits");
          const mErr = maxAbsDiff(mixed.logits, wm);
          assert(mErr < 1e-4 * Math.max(1, maxAbs(wm)), `${at} mixed batch: error ${mErr}`);
        }
      } finally {
        for (const [, e] of engines) e.dispose();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

Deno.test({
  name:
    "a Llama checkpoint that does not fit its config.json is refused naming the file and the tensor",
  ignore: tool.ignore,
  async fn() {
    tool.check();
    const dir = await Deno.makeTempDir({ prefix: "llama-bad-" });
    try {
      await generate("tiny-bias", [], dir);
      const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
      await Deno.writeTextFile(
        `${dir}/config.json`,
        JSON.stringify({ ...config, intermediate_size: config.intermediate_size + 1 }),
      );
      await assertRejects(
        () => loadModel(dir),
        RangeError,
        `${dir}/model.safetensors: tensor "model.layers.0.mlp.gate_proj.weight" must have shape`,
      );
      // A key/value head count the projections were not made for.
      await Deno.writeTextFile(
        `${dir}/config.json`,
        JSON.stringify({ ...config, num_key_value_heads: config.num_attention_heads }),
      );
      await assertRejects(() => loadModel(dir), RangeError, "self_attn.k_proj.weight");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
