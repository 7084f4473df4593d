/** The walk-through's configs load, and every dataset they name is there under DATA_DIR's default. */
import { join } from "node:path";
import { DEFAULT_DATA_DIR } from "../server/bootstrap.ts";
import { loadTrainingConfig } from "../server/training/config.ts";
import { assert, assertEquals } from "./assert.ts";

const EXAMPLES = new URL("../examples/", import.meta.url).pathname;

/** Every .yaml under examples/, the variants included. */
function* yamlFiles(dir: string, prefix = ""): Generator<string> {
  for (const e of Deno.readDirSync(dir)) {
    if (e.isDirectory) yield* yamlFiles(join(dir, e.name), `${prefix}${e.name}/`);
    else if (e.name.endsWith(".yaml")) yield `${prefix}${e.name}`;
  }
}

Deno.test("examples/*.yaml load without notes, and their dataset paths resolve inside the default DATA_DIR", async () => {
  let checked = 0;
  for (const name of yamlFiles(EXAMPLES)) {
    const { config, notes } = await loadTrainingConfig(join(EXAMPLES, name));
    assertEquals(notes, [], name);
    for (const f of [...config.model.data.train_ds, ...config.model.data.validation_ds]) {
      const st = await Deno.stat(join(DEFAULT_DATA_DIR, f)).catch(() => null);
      assert(st?.isFile, `${name}: ${f} is not a file under ${DEFAULT_DATA_DIR}`);
      checked++;
    }
  }
  assert(checked >= 8, `only ${checked} dataset paths checked`);
});

Deno.test("the walk-through's first two steps are the seed tutorial's, as it wrote them", async () => {
  const step1 = (await loadTrainingConfig(join(EXAMPLES, "sentiment_intent_p_tuning.yaml"))).config;
  assertEquals(step1.model.virtual_prompt_style, "p-tuning");
  assertEquals(step1.model.new_tasks, ["sentiment", "intent_and_slot"]);
  const t = new Map(step1.model.task_templates.map((x) => [x.taskname, x]));
  assertEquals(
    [t.get("sentiment")!.prompt_template, t.get("sentiment")!.virtual_token_splits],
    ["<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", [10]],
  );
  assertEquals(
    [t.get("intent_and_slot")!.prompt_template, t.get("intent_and_slot")!.virtual_token_splits],
    ["<|VIRTUAL_PROMPT_0|> Predict intent and slot <|VIRTUAL_PROMPT_1|> {utterance}{label}", [
      5,
      5,
    ]],
  );
  const step2 = (await loadTrainingConfig(join(EXAMPLES, "squad_prompt_tuning.yaml"))).config;
  assertEquals(
    [step2.model.virtual_prompt_style, step2.model.existing_tasks, step2.model.new_tasks],
    ["prompt-tuning", ["sentiment", "intent_and_slot"], ["squad"]],
  );
});
