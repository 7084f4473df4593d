/**
 * Forward and training-step throughput of each engine on the baseline's batches (32 examples of
 * the sentiment bench file, 10 soft-prompt rows prepended): forward tokens/s (logits at each
 * sequence's last row) and a prompt-tuning step's tokens/s (answer-only loss and the gradient
 * with respect to the input embeddings).
 * Run: deno run -A bench/forward_bench.ts [--engines fast,wasm] [--batches N]. Prints one JSON line.
 */
import { parseArgs } from "node:util";
import { createEngine, loadModel } from "../server/model/mod.ts";

const root = new URL("../", import.meta.url).pathname;
const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    engines: { type: "string", default: "fast,onednn,wasm,cpu" },
    batches: { type: "string", default: "4" },
  },
});
const model = await loadModel(`${root}models/tiny-gpt2`);
const C = model.config.nEmbd, VIRTUAL = 10, BATCH = 32;
const examples = Deno.readTextFileSync(`${root}test/fixtures/bench/sentiment_train_tokens.jsonl`)
  .split("\n").filter(Boolean).slice(0, BATCH * Number(args.batches))
  .map((l) => JSON.parse(l) as { prompt_ids: number[]; answer_ids: number[] });

const result: Record<string, unknown> = { bench: "forward", batch: BATCH, virtual: VIRTUAL };
for (const name of args.engines.split(",")) {
  let engine;
  try {
    engine = await createEngine(model, { backend: name });
  } catch (e) {
    result[name] = `unavailable: ${(e as Error).message}`; // e.g. oneDNN shim not built
    continue;
  }
  const prompt = engine.embed(Array.from({ length: VIRTUAL }, (_, i) => 100 + i));
  const batches = [];
  for (let s = 0; s < examples.length; s += BATCH) {
    const bt = examples.slice(s, s + BATCH);
    const lens = bt.map((e) => VIRTUAL + e.prompt_ids.length + e.answer_ids.length);
    const embeds = new Float32Array(lens.reduce((a, b) => a + b, 0) * C);
    const lossRows: number[] = [], targets: number[] = [], lastRows: number[] = [];
    let at = 0;
    bt.forEach((e, i) => {
      embeds.set(prompt, at * C);
      embeds.set(engine.embed([...e.prompt_ids, ...e.answer_ids]), (at + VIRTUAL) * C);
      const first = at + VIRTUAL + e.prompt_ids.length;
      e.answer_ids.forEach((id, k) => {
        lossRows.push(first + k - 1);
        targets.push(id);
      });
      at += lens[i];
      lastRows.push(at - 1);
    });
    batches.push({
      embeds,
      seqs: lens.map((length) => ({ length })),
      tokens: at,
      lossRows,
      targets,
      lastRows,
    });
  }
  // One untimed pass (JIT, buffers), then the timed ones.
  await engine.forward({
    embeds: batches[0].embeds,
    seqs: batches[0].seqs,
    logitRows: Int32Array.from(batches[0].lastRows),
  });
  let tokens = 0, t0 = performance.now();
  for (const b of batches) {
    await engine.forward({
      embeds: b.embeds,
      seqs: b.seqs,
      logitRows: Int32Array.from(b.lastRows),
    });
    tokens += b.tokens;
  }
  const forward = tokens / ((performance.now() - t0) / 1000);
  tokens = 0;
  t0 = performance.now();
  for (const b of batches) {
    await engine.lossAndGrad({
      embeds: b.embeds,
      seqs: b.seqs,
      lossRows: Int32Array.from(b.lossRows),
      targets: Int32Array.from(b.targets),
    });
    tokens += b.tokens;
  }
  const step = tokens / ((performance.now() - t0) / 1000);
  result[name] = {
    engine: engine.name,
    forward_tokens_per_s: Math.round(forward),
    train_step_tokens_per_s: Math.round(step),
  };
  engine.dispose();
}
console.log(JSON.stringify(result));
