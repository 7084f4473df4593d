/** A short prompt-tuning Train request of a sentiment-shaped task, for the multi-process tests. */
import { toStruct } from "../../client/struct.ts";

const root = new URL("../../", import.meta.url).pathname;

/** The first `n` records of a data split, relabelled for `task`. */
export function splitRecords(file: string, n: number, task: string) {
  return Deno.readTextFileSync(`${root}data/splits/${file}`).split("\n").slice(0, n).map((l) => ({
    ...JSON.parse(l),
    taskname: task,
  }));
}

/**
 * Prompt tuning of `task` on sentiment records, batch 2. Default: 4 virtual tokens, 16 training
 * records, 1 validation record.
 */
export function sentimentTrainRequest(
  name: string,
  task: string,
  maxSteps: number,
  valEvery: number,
  { virtualTokens = 4, trainRecords = 16, valRecords = 1 } = {},
) {
  return {
    config: {
      name,
      newTasks: [task],
      virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_PROMPT_TUNING" as const,
      taskTemplates: [{
        taskname: task,
        promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
        promptTemplateFields: ["sentence", "label"],
        totalVirtualTokens: virtualTokens,
        virtualTokenSplits: [virtualTokens],
        truncateField: "sentence",
        answerField: "label",
      }],
      promptTuning: { initMethod: "INIT_METHOD_SAMPLED_VOCAB" as const },
      optim: { name: "adamw", lr: 0.03 },
      maxSteps,
      globalBatchSize: 2,
      microBatchSize: 2,
      valCheckInterval: valEvery,
      trainDs: { records: splitRecords("sentiment_train.jsonl", trainRecords, task).map(toStruct) },
      validationDs: {
        records: splitRecords("sentiment_val.jsonl", valRecords, task).map(toStruct),
      },
    },
  };
}
