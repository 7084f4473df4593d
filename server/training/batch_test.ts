import { assertEquals } from "../../test/assert.ts";
import { FakeEngine } from "../serving/_fake_engine.ts";
import { validateTemplate } from "../prompts/template.ts";
import { packBatch } from "./batch.ts";

const engine = new FakeEngine();
const V = engine.config.vocabSize, C = engine.config.nEmbd;
const tables = new Map([["t", new Float32Array(2 * C).fill(0.5)]]);
// Two virtual tokens, a prompt of two tokens, an answer of one.
const ids = Int32Array.of(V, V + 1, 3, 4, 5);

Deno.test("packBatch(): answer_only_loss scores the answer; false (NeMo's default) every real token", () => {
  const answerOnly = packBatch(engine, [{
    taskname: "t",
    ids,
    answerStart: 4,
    answerOnlyLoss: true,
  }], tables);
  assertEquals([...answerOnly.lossRows], [3]);
  assertEquals([...answerOnly.targets], [5]);
  // Before, answer_only_loss was read and never used: both gave the answer's rows only.
  const all = packBatch(
    engine,
    [{ taskname: "t", ids, answerStart: 4, answerOnlyLoss: false }],
    tables,
  );
  assertEquals([...all.lossRows], [1, 2, 3]); // 3 from the last virtual row, then 4, then 5
  assertEquals([...all.targets], [3, 4, 5]);
  assertEquals(all.rowsPerExample, [3]);
});

Deno.test("A template's answer_only_loss defaults to false, as NeMo's", () => {
  const t = validateTemplate({
    taskname: "t",
    prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
    total_virtual_tokens: 2,
    virtual_token_splits: [2],
    answer_field: "label",
  }, "cfg");
  assertEquals(t.answer_only_loss, false);
});
