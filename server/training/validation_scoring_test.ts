import { assert, assertEquals } from "../../test/assert.ts";
import { createEngine, loadModel } from "../model/mod.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { generate } from "../model/generate.ts";
import { embedWithPrompt } from "./batch.ts";
import { initialTable } from "./trainer.ts";
import {
  generateAndScore,
  type GeneratedExample,
  interleaveByTask,
  type ValidationGeneration,
} from "./validation_scoring.ts";

const root = new URL("../../", import.meta.url).pathname;
const model = await loadModel(`${root}models/tiny-gpt2`);
const tokenizer = await loadTokenizer(`${root}models/tiny-gpt2`);
const engine = await createEngine(model, { backend: "fast" });
const V = model.config.vocabSize, EOS = tokenizer.eosId;

const table = initialTable(
  { task: "t", virtualTokens: 3, init: { method: "vocab" } },
  { engine, encode: (s) => tokenizer.encode(s) },
  5,
);
const tables = new Map([["t", table]]);
const GREEDY: ValidationGeneration["sampling"] = {
  minNewTokens: 0,
  doSample: false,
  temperature: 1,
  topK: 0,
  topP: 1,
  seed: 1,
  repetitionPenalty: 1,
  stop: [],
  logprobs: false,
};
/** Three virtual tokens, then text: the prompt of every example here. */
const prompt = [V, V + 1, V + 2, ...tokenizer.encode(" The weather today is")];

/** The greedy continuation of `context` under the table, EOS cut off. */
async function continuation(context: number[], n: number): Promise<number[]> {
  const [out] = await generate(engine, [embedWithPrompt(engine, context, table, "t")], {
    maxNewTokens: n,
    eosId: EOS,
    sampling: GREEDY,
  });
  assert(!out.ids.includes(EOS), "the continuation used here must not end early");
  return out.ids;
}

interface Example extends GeneratedExample {
  answer: string;
}

async function score(examples: Example[], g: Partial<ValidationGeneration>) {
  const answers: string[] = [];
  const scores = await generateAndScore(engine, tables, examples, {
    limit: Infinity,
    maxNewTokens: 4,
    batchSize: 4,
    sampling: GREEDY,
    ...g,
  }, {
    decode: (ids) => tokenizer.decode(ids),
    eosId: EOS,
    newMetrics: () => ({
      add: (_task, predicted) => answers.push(predicted),
      result: () => ({ t: { exact_match: 0 } }),
    }),
  });
  return { ...scores, answers };
}

Deno.test("NeMo parity: validation regenerates from one token before the answer and matches whole decoded sequences", async () => {
  // megatron_gpt_prompt_learning_model.py v1.20.0:378: input_lenghts = torch.argmax(loss_mask, 1)
  // of the loss mask shifted by one, i.e. answer_start - 1, so the last prompt token is generated
  // again; :400-403 decodes whole rows (ids_to_text drops special tokens) and AccuracyScore
  // (prompt_learning_metrics.py v1.20.0:29-37) counts `pred == label`.
  const context = prompt.slice(0, -1);
  const g = await continuation(context, 4);
  // An example whose last prompt token and answer are what greedy decoding gives after `context`.
  const hit: Example = {
    taskname: "t",
    ids: Int32Array.from([...context, ...g]),
    answerStart: context.length + 1,
    answer: tokenizer.decode(g.slice(1)),
  };
  // The same with its answer's last token changed: the whole sequence no longer matches.
  const miss: Example = {
    ...hit,
    ids: Int32Array.from([...context, ...g.slice(0, 3), (g[3] + 1) % V]),
  };
  const nemo = await score([hit, miss], { match: "sequence" });
  assertEquals(nemo.accuracy, 0.5);
  assertEquals(nemo.metrics.t.accuracy, 0.5);
  // The per-task metrics get the answer: the tokens after the regenerated one.
  assertEquals(nemo.answers[0], tokenizer.decode(g.slice(1)));
  // Before, generation continued the whole prompt: four new tokens after g[0], the last of
  // which the example does not have.
  const answerOnly = await score([hit], { match: "answer" });
  const after = await continuation([...context, g[0]], 4);
  assertEquals(answerOnly.answers[0], tokenizer.decode(after));
  assertEquals(after.slice(0, 3), g.slice(1));
});

Deno.test("NeMo parity: a sequence match is exact string equality of the decoded texts, special tokens dropped", async () => {
  const context = prompt.slice(0, -1);
  const g = await continuation(context, 4);
  // With EOS at the end of the example (add_eos): EOS is a special token, dropped from both.
  const withEos: Example = {
    taskname: "t",
    ids: Int32Array.from([...context, ...g, EOS]),
    answerStart: context.length + 1,
    answer: "",
  };
  assertEquals((await score([withEos], { match: "sequence" })).accuracy, 1);
  // One token short of the generation: the prediction is longer than the example, no match
  // (trimming or a prefix does not count).
  const shorter: Example = { ...withEos, ids: Int32Array.from([...context, ...g.slice(0, 3)]) };
  assertEquals((await score([shorter], { match: "sequence" })).accuracy, 0);
});

Deno.test("generateAndScore() generates for every example unless limited, then samples every task", async () => {
  const ex = (taskname: string): Example => ({
    taskname,
    ids: Int32Array.from(prompt),
    answerStart: prompt.length,
    answer: "",
  });
  const many = [...Array.from({ length: 5 }, () => ex("t")), ex("u"), ex("u")];
  const both = new Map([["t", table], ["u", table]]);
  const run = async (limit: number) => {
    const seen: string[] = [];
    await generateAndScore(engine, both, many, {
      limit,
      maxNewTokens: 1,
      batchSize: 8,
      sampling: GREEDY,
    }, {
      decode: (ids) => tokenizer.decode(ids),
      eosId: EOS,
      newMetrics: () => ({ add: (task) => seen.push(task), result: () => ({}) }),
    });
    return seen;
  };
  assertEquals((await run(Infinity)).length, 7);
  assertEquals(await run(4), ["t", "u", "t", "u"]);
  assertEquals(interleaveByTask([ex("a"), ex("a"), ex("b")]).map((e) => e.taskname), [
    "a",
    "b",
    "a",
  ]);
});
