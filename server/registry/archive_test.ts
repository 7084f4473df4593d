import { join } from "node:path";
import { assertEquals } from "../../test/assert.ts";
import { validateTemplate } from "../prompts/template.ts";
import { writeTaskArchive } from "./archive.ts";
import { parsePeftAdapter } from "./peft.ts";

Deno.test("a run's archive (model.nemo_path) is a tar that tar lists and whose adapters PEFT import reads back", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const template = validateTemplate({
      taskname: "sentiment",
      prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      total_virtual_tokens: 3,
      virtual_token_splits: [3],
    }, "t");
    const table = Float32Array.from({ length: 3 * 4 }, (_, i) => i / 7);
    const path = join(dir, "out", "run.nemo");
    await writeTaskArchive(path, {
      configYaml: "name: run\n",
      tasks: [{
        task: "sentiment",
        draft: { template, table, totalVirtualTokens: 3, hiddenSize: 4 },
      }],
    });
    const list = await new Deno.Command("tar", { args: ["-tf", path], stdout: "piped" }).output();
    assertEquals(list.code, 0);
    assertEquals(new TextDecoder().decode(list.stdout).trim().split("\n"), [
      "model_config.yaml",
      "tasks/sentiment/template.json",
      "tasks/sentiment/adapter_config.json",
      "tasks/sentiment/adapter_model.safetensors",
    ]);
    const x = join(dir, "x");
    await Deno.mkdir(x);
    const extracted = await new Deno.Command("tar", { args: ["-xf", path, "-C", x] }).output();
    assertEquals(extracted.code, 0);
    assertEquals(await Deno.readTextFile(join(x, "model_config.yaml")), "name: run\n");
    const task = join(x, "tasks", "sentiment");
    const saved = JSON.parse(await Deno.readTextFile(join(task, "template.json")));
    assertEquals(saved, template);
    const draft = parsePeftAdapter({
      configJson: await Deno.readTextFile(join(task, "adapter_config.json")),
      safetensorsBytes: await Deno.readFile(join(task, "adapter_model.safetensors")),
    }, {
      name: "sentiment",
      promptTemplate: saved.prompt_template,
      fingerprint: { hiddenSize: 4, vocabSize: 10, weightsHash: "x" },
    });
    assertEquals(draft.table, table);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
