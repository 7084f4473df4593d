/**
 * The serving step: the service's own inference path (InferenceService, PromptSlots, Scheduler)
 * on the cuda engine, as server/serving/mixed_batch_test.ts runs it on the CPU engines, over the
 * generated checkpoint and its tokenizer. Three tasks of 3, 10 and 15 virtual tokens; each
 * request's greedy output alone must equal its output in staggered batches that mix the tasks
 * and join new requests' prefills with running decodes.
 */
import type { Engine } from "../../server/model/engine.ts";
import type { Tokenizer } from "../../server/model/tokenizer.ts";
import type { Matrix } from "../../server/model/half.ts";
import { type InferenceRequest, InferenceService } from "../../server/serving/inference_service.ts";
import { sentimentTask, tableFromVocab } from "../../server/serving/testing/sentiment_task.ts";
import { PromptSlots } from "../../server/serving/prompt_slots.ts";
import {
  type GenerationResult,
  Scheduler,
  type StepStats,
} from "../../server/serving/scheduler.ts";

const SENTENCES = [
  "The company reported a net profit of EUR 5 million .",
  "Operating profit fell to EUR 1.2 mn from EUR 3.4 mn .",
  "Sales rose sharply in the third quarter .",
  "The board did not comment .",
  "Shares dropped after the announcement .",
  "Net sales increased by 10 percent .",
  "The order is worth some EUR 30 million .",
  "Production will be moved to Finland .",
  "Cash flow from operations was negative .",
];

export interface ServingReport {
  requests: number;
  /** Requests whose mixed-batch output differs from their output alone (must be none). */
  differing: { request: number; task: string; alone: number[]; mixed: number[] }[];
  /** Engine steps that joined prefills with running decodes, and the largest batch. */
  mixedSteps: number;
  maxBatch: number;
  seconds: number;
}

export async function checkServing(
  engine: Engine,
  wte: Matrix,
  tokenizer: Tokenizer,
): Promise<ServingReport> {
  const { nEmbd: C, vocabSize: V } = engine.config;
  const tasks = new Map(
    [["three", 3], ["ten", 10], ["fifteen", 15]].map(([n, v]) => [
      n as string,
      sentimentTask(n as string, tableFromVocab(wte, V, C, v as number, v as number), C),
    ]),
  );
  const service = (onStep?: (s: StepStats) => void) => {
    const slots = new PromptSlots({ vocabSize: V, hidden: C, wte, maxSlots: 4 });
    const scheduler = new Scheduler({
      engine,
      embedder: slots,
      decode: (ids) => tokenizer.decode(ids),
      eosId: tokenizer.eosId,
      limits: { maxBatchSize: 4 },
      onStep,
    });
    const get = (name: string) => Promise.resolve(tasks.get(name)!);
    return new InferenceService({
      describeTask: get,
      loadTable: async (name) => (await get(name)).table!,
      tokenizer,
      slots,
      scheduler,
    });
  };
  const requests: InferenceRequest[] = SENTENCES.map((sentence, i) => ({
    task: ["three", "ten", "fifteen"][i % 3],
    fields: { sentence },
    // min = max: EOS cannot end them early, so batches really do change while they decode.
    options: { maxNewTokens: 4 + (i % 3) * 3, minNewTokens: 4 + (i % 3) * 3 },
  }));
  const t0 = performance.now();
  const alone: GenerationResult[] = [];
  for (const r of requests) alone.push(await service().infer(r));

  let mixedSteps = 0, maxBatch = 0;
  let secondStep = () => {};
  const stepped = new Promise<void>((resolve) => (secondStep = resolve));
  const infer = service((s) => {
    if (s.prefillSeqs > 0 && s.decodeTokens > 0) mixedSteps++;
    maxBatch = Math.max(maxBatch, s.batchSize);
    if (s.step === 2) secondStep();
  });
  const mixed = requests.slice(0, 3).map((r) => infer.infer(r));
  await stepped; // the rest join while the first ones decode
  mixed.push(...requests.slice(3).map((r) => infer.infer(r)));
  const results = await Promise.all(mixed);
  const differing = results.flatMap((r, i) =>
    r.text === alone[i].text && r.tokenIds.join() === alone[i].tokenIds.join()
      ? []
      : [{ request: i, task: requests[i].task, alone: alone[i].tokenIds, mixed: r.tokenIds }]
  );
  return {
    requests: requests.length,
    differing,
    mixedSteps,
    maxBatch,
    seconds: (performance.now() - t0) / 1000,
  };
}
