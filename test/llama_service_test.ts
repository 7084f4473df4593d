/**
 * Everything above the engine, unchanged, on a Llama-family checkpoint: the service's runtime
 * (`openRuntime`) loads a SmolLM2-shaped checkpoint (random weights at its real widths, two
 * layers; written by test/python/llama_reference.py) with a tokenizer.json (the first 999 tokens
 * of GPT-2's byte-level BPE, in Hugging Face's layout, read through @huggingface/tokenizers);
 * training runs prompt tuning and p-tuning jobs of different virtual-token counts; inference
 * serves both tasks in one mixed batch exactly as each alone; and a task exported as a PEFT
 * adapter (token_dim = the hidden size) and imported again answers the same.
 */
import { assert, assertEquals } from "./assert.ts";
import { PYTHON, pythonMissing, requireTool } from "./support/required_tool.ts";
import { openRuntime, type Runtime } from "../server/bootstrap.ts";
import { createInference, createServices, type Services } from "../server/services.ts";
import { exportPeftAdapter, importPeftAdapter } from "../server/registry/peft.ts";
import type { InferenceRequest } from "../server/serving/inference_service.ts";
import { gpt2TokenizerJson } from "../server/model/testing/gpt2_tokenizer_json.ts";

const root = new URL("../", import.meta.url).pathname;
const VOCAB = 1000;

const tool = requireTool(
  await pythonMissing("torch", "python3-torch"),
  "llama_service_test.ts",
);

async function writeModel(dir: string): Promise<void> {
  const out = await new Deno.Command(PYTHON, {
    args: [
      `${root}test/python/llama_reference.py`,
      ...["--shape", "smollm2-135m", "--layers", "2", "--vocab", String(VOCAB), "--out", dir],
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  config.bos_token_id = config.eos_token_id = VOCAB - 1;
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  await Deno.writeTextFile(
    `${dir}/tokenizer.json`,
    JSON.stringify(await gpt2TokenizerJson(`${root}models/tiny-gpt2`, { tokens: VOCAB })),
  );
}

function records(file: string, n: number, taskname: string) {
  return Deno.readTextFileSync(`${root}data/splits/${file}`).split("\n").slice(0, n)
    .map((l) => ({ ...JSON.parse(l), taskname }));
}

async function train(s: Services, config: Record<string, unknown>, inline: unknown[]) {
  const job = await s.training.submit({
    config: { kind: "object", config },
    inline: { train: inline },
  });
  for await (const e of s.training.events(job.id, 0)) {
    if (e.event.type === "failed") throw new Error(`job failed: ${JSON.stringify(e.event)}`);
    if (e.event.type === "completed" || e.event.type === "cancelled") return e.event;
  }
  throw new Error("the job's events ended without an outcome");
}

function nemoConfig(name: string, over: Record<string, unknown>) {
  return {
    name,
    trainer: { max_steps: 3, val_check_interval: 3, log_every_n_steps: 1 },
    model: {
      seed: 1,
      global_batch_size: 2,
      micro_batch_size: 2,
      optim: { name: "adamw", lr: 0.03 },
      data: { train_ds: [] },
      ...over,
    },
  };
}

Deno.test({
  name:
    "a SmolLM2-shaped checkpoint: prompt tuning and p-tuning train, a mixed batch serves both as alone, a PEFT round trip answers the same",
  ignore: tool.ignore,
  async fn() {
    tool.check();
    const dir = await Deno.makeTempDir({ prefix: "llama-service-" });
    let rt: Runtime | undefined;
    let services: Services | undefined;
    try {
      await writeModel(dir);
      rt = await openRuntime({ modelDir: dir, registryDir: `${dir}/registry`, backend: "fast" });
      assertEquals(rt.model.config.arch, "llama");
      assertEquals(rt.tokenizer.eosId, VOCAB - 1);
      // The prefix cache on: each task version's shared prompt rows are prefilled once and forked.
      let prefixRows = 0;
      services = await createServices(rt, {
        dataDir: root,
        runsDir: `${dir}/runs`,
        prefixCacheMb: 8,
        onStep: (st) => void (prefixRows += st.prefixTokens),
      });
      services.training.start();

      const done = await train(
        services,
        nemoConfig("pt", {
          virtual_prompt_style: "prompt-tuning",
          new_tasks: ["sentiment"],
          task_templates: [{
            taskname: "sentiment",
            prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            total_virtual_tokens: 4,
            virtual_token_splits: [4],
            truncate_field: "sentence",
          }],
        }),
        records("sentiment_train.jsonl", 6, "sentiment"),
      );
      assertEquals(done.type, "completed");
      const pt = await train(
        services,
        nemoConfig("ptune", {
          virtual_prompt_style: "p-tuning",
          p_tuning: { encoder_type: "mlp", encoder_hidden: 32, num_layers: 2 },
          new_tasks: ["intent_and_slot"],
          task_templates: [{
            taskname: "intent_and_slot",
            prompt_template: "<|VIRTUAL_PROMPT_0|> {utterance}<|VIRTUAL_PROMPT_1|>{label}",
            total_virtual_tokens: 6,
            virtual_token_splits: [3, 3],
            truncate_field: "utterance",
          }],
        }),
        records("intent_and_slot_train.jsonl", 6, "intent_and_slot"),
      );
      assertEquals(pt.type, "completed");
      const sentiment = await rt.store.get("sentiment");
      assertEquals([sentiment.totalVirtualTokens, sentiment.hiddenSize], [4, 576]);
      assertEquals((await rt.store.get("intent_and_slot")).totalVirtualTokens, 6);

      const reqs: InferenceRequest[] = [
        { task: "sentiment", fields: { sentence: "Sales rose ." }, options: { maxNewTokens: 4 } },
        {
          task: "intent_and_slot",
          fields: { utterance: "wake me up at nine" },
          options: { maxNewTokens: 4 },
        },
        { task: "sentiment", fields: { sentence: "Profit fell ." }, options: { maxNewTokens: 4 } },
      ];
      const mixed = await services.inference.inferMany(reqs);
      for (const [i, r] of reqs.entries()) {
        const alone = await services.inference.infer(r);
        const m = mixed[i];
        assert("result" in m, JSON.stringify(m));
        assertEquals(m.result.tokenIds, alone.tokenIds, `request ${i}`);
        assertEquals(m.result.tokenIds.length > 0, true);
      }

      // Without the prefix cache, the same tokens.
      const uncached = createInference(rt, { prefixCacheMb: 0 });
      try {
        const plain = await uncached.inference.inferMany(reqs);
        assertEquals(
          plain.map((r) => "result" in r && r.result.tokenIds),
          mixed.map((r) => "result" in r && r.result.tokenIds),
        );
      } finally {
        await uncached.scheduler.close();
      }
      assert(prefixRows > 0, "some prompt rows came from the prefix cache");

      // PEFT: export, import under another name, the same answer.
      await exportPeftAdapter(sentiment, `${dir}/peft`);
      const draft = await importPeftAdapter(`${dir}/peft`, {
        name: "sentiment_peft",
        fingerprint: rt.fingerprint,
        promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      });
      await rt.store.put("sentiment_peft", draft);
      const again = await services.inference.infer({ ...reqs[0], task: "sentiment_peft" });
      assertEquals(again.tokenIds, (await services.inference.infer(reqs[0])).tokenIds);
    } finally {
      await services?.close();
      rt?.engine.dispose();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
