/**
 * Scoring candidate answers (InferRequest.choices) on the real model (models/tiny-gpt2), against
 * PEFT: test/fixtures/golden.safetensors `pt.*` is a soft prompt of 10 rows split 5 + 5 around a
 * sentence, then " sentiment:", and the PEFT/transformers loss of the label " positive" + EOS
 * after it (0.5899635, the mean over its two tokens; see test/fixtures/README.md). Scoring that
 * label must give its log-probability, -2 x 0.5899635.
 */
import assert from "node:assert/strict";
import { createEngine, loadModel } from "../model/mod.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { InferenceService } from "./inference_service.ts";
import { GOLDEN_LABEL_LOSS, goldenSentimentTask } from "./testing/golden_task.ts";
import { PromptSlots } from "./prompt_slots.ts";
import { Scheduler } from "./scheduler.ts";

const root = new URL("../../", import.meta.url).pathname;
const model = await loadModel(`${root}models/tiny-gpt2`);
const tokenizer = await loadTokenizer(`${root}models/tiny-gpt2`);
const engine = await createEngine(model, { backend: "fast", precision: "fp32" });
const { nEmbd: C, vocabSize: V } = model.config;
const golden = await goldenSentimentTask("peft");
const { task } = golden;
const PEFT_LOSS = GOLDEN_LABEL_LOSS;
const sentence = tokenizer.decode(Array.from(golden.inputIds));

function service() {
  const slots = new PromptSlots({
    vocabSize: V,
    hidden: C,
    wte: model.weights.wte,
    maxSlots: 2,
    maxVirtualTokens: 16,
  });
  const scheduler = new Scheduler({
    engine,
    embedder: slots,
    decode: (ids) => tokenizer.decode(ids),
    eosId: tokenizer.eosId,
  });
  return {
    slots,
    infer: new InferenceService({
      describeTask: () => Promise.resolve(task),
      loadTable: () => Promise.resolve(task.table!),
      tokenizer,
      slots,
      scheduler,
    }),
  };
}

Deno.test("scoring a label gives PEFT's log-probability of it after the soft prompt", async () => {
  const { infer } = service();
  const r = await infer.infer({
    task: "peft",
    fields: { sentence },
    choices: ["positive", "negative", "neutral"],
  });
  const [pos] = r.choices!;
  // The label's ids as PEFT scored them: " positive" then EOS.
  assert.deepEqual(pos.tokenIds, Array.from(golden.labelIds));
  assert.ok(
    Math.abs(pos.logprob - -2 * PEFT_LOSS) < 2e-4,
    `log p(" positive" EOS) = ${pos.logprob}, PEFT: ${-2 * PEFT_LOSS}`,
  );
  assert.ok(Math.abs(pos.logprobPerToken - -PEFT_LOSS) < 1e-4);
  const total = r.choices!.reduce((s, c) => s + c.probability, 0);
  assert.ok(Math.abs(total - 1) < 1e-9, `probabilities sum to ${total}`);
  // The text is the most likely candidate, and its probability is the largest.
  const best = r.choices!.reduce((a, b) => (b.logprob > a.logprob ? b : a));
  assert.equal(r.text, best.text);
  assert.equal(r.finishReason, "choice");
});

Deno.test("each candidate's log-probability is a teacher-forced forward of the prompt and that candidate", async () => {
  const { infer, slots } = service();
  const choices = ["positive", "negative", "neutral", "very positive indeed", "a"];
  const r = await infer.infer({ task: "peft", fields: { sentence }, choices });
  // The same prompt, filled and embedded by hand: soft rows, sentence, soft rows, " sentiment:".
  const prompt = [
    ...Array.from({ length: 5 }, (_, k) => V + k),
    ...golden.inputIds,
    ...Array.from({ length: 5 }, (_, k) => V + 5 + k),
    ...golden.midIds,
  ];
  for (const [i, c] of r.choices!.entries()) {
    const answer = [...tokenizer.encode(" " + choices[i]), tokenizer.eosId];
    assert.deepEqual(c.tokenIds, answer);
    const ids = [...prompt, ...answer];
    const embeds = new Float32Array(ids.length * C);
    ids.forEach((id, t) => {
      const row = id >= V
        ? task.table!.subarray((id - V) * C, (id - V + 1) * C)
        : engine.embed([id]);
      embeds.set(row, t * C);
    });
    const { logits } = await engine.forward({
      embeds,
      seqs: [{ length: ids.length }],
      logitRows: Int32Array.from(answer, (_, t) => prompt.length - 1 + t),
    });
    let want = 0;
    answer.forEach((id, t) => {
      const row = logits.subarray(t * V, (t + 1) * V);
      const max = Math.max(...row);
      want += row[id] - max - Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
    });
    assert.ok(Math.abs(c.logprob - want) < 1e-4, `${choices[i]}: ${c.logprob} vs ${want}`);
  }
  assert.equal(slots.stats().inUse, 0);
});

Deno.test("choices mix with generation in one batch, and are refused beyond their limits", async () => {
  const { infer } = service();
  const [scored, generated] = await infer.inferMany([
    { task: "peft", fields: { sentence }, choices: ["positive", "negative"] },
    { task: "peft", fields: { sentence }, options: { maxNewTokens: 3 } },
  ]);
  assert.ok(scored.ok && generated.ok);
  assert.equal(scored.result.choices!.length, 2);
  assert.equal(generated.result.choices, undefined);
  await assert.rejects(
    infer.infer({ task: "peft", fields: { sentence }, choices: [] }),
    /choices must hold 1 to 16 candidate answers \(max_choices\): found 0/,
  );
  await assert.rejects(
    infer.infer({ task: "peft", fields: { sentence }, choices: ["x".repeat(2000)] }),
    /choices\[0\] must be a string of at most 1024 characters/,
  );
  // The stream of a scoring request is its result.
  const events = [];
  for await (
    const e of infer.inferStream({ task: "peft", fields: { sentence }, choices: ["a", "b"] })
  ) {
    events.push(e);
  }
  assert.equal(events.length, 1);
  assert.equal(events[0].type, "done");
});

Deno.test("allowed: greedy and sampled generation only ever give one of the allowed answers", async () => {
  const { infer, slots } = service();
  const allowed = ["positive", "negative", "neutral", "mixed feelings"];
  const greedy = await infer.infer({ task: "peft", fields: { sentence }, allowed });
  assert.equal(greedy.finishReason, "choice");
  assert.ok(allowed.includes(greedy.text), greedy.text);
  assert.equal(greedy.choice, allowed.indexOf(greedy.text));
  // Its tokens are that answer's, EOS last, as the template trains it.
  assert.deepEqual(greedy.tokenIds, [...tokenizer.encode(" " + greedy.text), tokenizer.eosId]);
  // Greedy under the constraint takes, token by token, the likeliest token that stays on an
  // allowed answer: here the answers' first tokens differ, so its answer is the one whose first
  // token the prompt's last row likes best.
  const prompt = [
    ...Array.from({ length: 5 }, (_, k) => V + k),
    ...golden.inputIds,
    ...Array.from({ length: 5 }, (_, k) => V + 5 + k),
    ...golden.midIds,
  ];
  const embeds = new Float32Array(prompt.length * C);
  prompt.forEach((id, t) => {
    const row = id >= V ? task.table!.subarray((id - V) * C, (id - V + 1) * C) : engine.embed([id]);
    embeds.set(row, t * C);
  });
  const { logits } = await engine.forward({
    embeds,
    seqs: [{ length: prompt.length }],
    logitRows: Int32Array.of(prompt.length - 1),
  });
  const firsts = allowed.map((a) => tokenizer.encode(" " + a)[0]);
  const want = firsts.indexOf(firsts.reduce((a, b) => (logits[b] > logits[a] ? b : a)));
  assert.equal(greedy.text, allowed[want]);
  // Sampled at a high temperature: still always an allowed answer.
  for (let seed = 0; seed < 12; seed++) {
    const r = await infer.infer({
      task: "peft",
      fields: { sentence },
      allowed,
      options: { doSample: true, temperature: 5, seed },
    });
    assert.ok(allowed.includes(r.text), `seed ${seed}: ${r.text}`);
    assert.equal(r.finishReason, "choice");
  }
  assert.equal(slots.stats().inUse, 0);
});
