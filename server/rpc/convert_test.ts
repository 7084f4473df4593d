import { status } from "@grpc/grpc-js";
import { assertEquals } from "../../test/assert.ts";
import type { TrainConfig__Output } from "../../proto/gen/promptlearning/v1/TrainConfig.ts";
import { validateTrainingConfig } from "../training/config.ts";
import type { JobEvent } from "../training/events.ts";
import { toInferenceRequest, toProtoEvent, toTrainRequest, trainConfigObject } from "./convert.ts";

/** A TrainConfig as proto-loader delivers it (defaults filled in). */
function protoConfig(over: Partial<TrainConfig__Output>): TrainConfig__Output {
  return {
    name: "",
    taskTemplates: [],
    newTasks: [],
    existingTasks: [],
    virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_UNSPECIFIED",
    promptTuning: null,
    pTuning: null,
    optim: null,
    earlyStopping: null,
    trainDs: null,
    validationDs: null,
    testDs: null,
    skipBadRecords: false,
    ...over,
  } as TrainConfig__Output;
}

Deno.test("trainConfigObject() maps the structured config onto NeMo's YAML keys, which the domain accepts", () => {
  const c = protoConfig({
    name: "run",
    taskTemplates: [{
      taskname: "sentiment",
      promptTemplate: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
      promptTemplateFields: [],
      totalVirtualTokens: 10,
      virtualTokenSplits: [10],
      answerField: "label",
      maxSeqLength: 128,
    }] as TrainConfig__Output["taskTemplates"],
    newTasks: ["sentiment"],
    virtualPromptStyle: "VIRTUAL_PROMPT_STYLE_P_TUNING",
    pTuning: { encoderType: "ENCODER_TYPE_LSTM", numLayers: 2 } as TrainConfig__Output["pTuning"],
    optim: {
      name: "",
      betas: [],
      sched: { name: "cosine", warmupSteps: 5 },
      lr: 0.01,
    } as unknown as TrainConfig__Output["optim"],
    maxEpochs: 2,
    globalBatchSize: 8,
    microBatchSize: 8,
    trainDs: { files: ["sentiment/train.jsonl"], records: [] },
  });
  const o = trainConfigObject(c) as {
    name: string;
    trainer: Record<string, unknown>;
    model: Record<string, unknown> & { data: Record<string, unknown> };
  };
  assertEquals(o.name, "run");
  assertEquals(o.trainer.max_epochs, 2);
  assertEquals(o.model.virtual_prompt_style, "p-tuning");
  assertEquals(o.model.p_tuning, { encoder_type: "lstm", num_layers: 2 });
  assertEquals(o.model.optim, { lr: 0.01, sched: { name: "cosine", warmup_steps: 5 } });
  assertEquals(o.model.global_batch_size, 8);
  assertEquals(o.model.data.train_ds, ["sentiment/train.jsonl"]);
  assertEquals(o.model.data.refuse_missing_fields, undefined);
  const refusing = trainConfigObject({ ...c, refuseMissingFields: true }) as typeof o;
  assertEquals(refusing.model.data.refuse_missing_fields, true);
  assertEquals(o.model.validation_match, undefined);
  const answer = trainConfigObject({
    ...c,
    validationMatch: "VALIDATION_MATCH_ANSWER",
  }) as typeof o;
  assertEquals(answer.model.validation_match, "answer");
  assertEquals((o.model.task_templates as Record<string, unknown>[])[0].max_seq_length, 128);
  // The same validator as YAML: defaults applied, rules checked.
  const { config } = validateTrainingConfig(o);
  assertEquals([config.model.p_tuning.encoder_type, config.model.optim.sched?.warmup_steps], [
    "lstm",
    5,
  ]);
});

Deno.test("trainConfigObject() maps each encoder type to its config name: MLP is NeMo's, PEFT_MLP PEFT's", () => {
  const encoderOf = (encoderType: string, extra: Record<string, unknown> = {}) =>
    (trainConfigObject(protoConfig({
      pTuning: { encoderType, ...extra } as unknown as TrainConfig__Output["pTuning"],
    })) as { model: { p_tuning: Record<string, unknown> } }).model.p_tuning;
  assertEquals(encoderOf("ENCODER_TYPE_LSTM"), { encoder_type: "lstm" });
  assertEquals(encoderOf("ENCODER_TYPE_MLP"), { encoder_type: "mlp" });
  assertEquals(encoderOf("ENCODER_TYPE_TPMLP", { initStd: 0.05 }), {
    encoder_type: "tpmlp",
    init_std: 0.05,
  });
  assertEquals(encoderOf("ENCODER_TYPE_PEFT_MLP"), { encoder_type: "peft_mlp" });
  assertEquals(encoderOf("ENCODER_TYPE_EMBEDDING"), { encoder_type: "embedding" });
  assertEquals(encoderOf("ENCODER_TYPE_LSTM", { dropout: 0.1 }), {
    encoder_type: "lstm",
    dropout: 0.1,
  });
  // Unspecified leaves the choice to the config's default.
  assertEquals(encoderOf("ENCODER_TYPE_UNSPECIFIED"), {});
});

Deno.test("toTrainRequest() puts the config's inline records before the extra ones", () => {
  const rec = (s: string) => ({ fields: { sentence: { kind: "stringValue", stringValue: s } } });
  const r = toTrainRequest({
    source: "config",
    config: protoConfig({ trainDs: { files: [], records: [rec("a")] } as never }),
    extraTrainRecords: { files: [], records: [rec("b")] } as never,
    extraValidationRecords: null,
  } as never);
  assertEquals(r.inline?.train, [{ sentence: "a" }, { sentence: "b" }]);
  const t = toTrainRequest({
    source: "config",
    config: protoConfig({ testDs: { files: [], records: [rec("c")] } as never }),
  } as never);
  assertEquals(t.inline?.test, [{ sentence: "c" }]);
});

Deno.test("toInferenceRequest() gives proto3 zeros their documented meaning and passes the rest as sent", () => {
  const base = {
    task: "t",
    fields: { a: "b" },
    maxNewTokens: 0,
    minNewTokens: 0,
    stop: [],
    returnLogprobs: false,
    sampling: null,
    choices: [],
    allowed: [],
  };
  assertEquals(toInferenceRequest(base as never).options, {
    doSample: false,
    stop: [],
    logprobs: false,
  });
  // No candidates is generation; candidates are scored.
  assertEquals(toInferenceRequest(base as never).choices, undefined);
  assertEquals(toInferenceRequest({ ...base, choices: ["a", "b"] } as never).choices, ["a", "b"]);
  assertEquals(toInferenceRequest(base as never).allowed, undefined);
  assertEquals(toInferenceRequest({ ...base, allowed: ["a"] } as never).allowed, ["a"]);
  const sampled = toInferenceRequest({
    ...base,
    version: 3,
    maxNewTokens: -2,
    sampling: { mode: "random", random: { temperature: 0, topK: 0, topP: 0, seed: 9 } },
  } as never);
  assertEquals(sampled.version, 3);
  // -2 and temperature 0 reach the domain, which refuses them with one rule each.
  assertEquals(sampled.options, {
    maxNewTokens: -2,
    doSample: true,
    temperature: 0,
    seed: 9,
    stop: [],
    logprobs: false,
  });
});

Deno.test("a failed event carries its gRPC code: a full disk is RESOURCE_EXHAUSTED, an old event UNKNOWN", () => {
  const head = { sequence: 3, jobId: "j", time: new Date(0) };
  const failed = (event: JobEvent["event"]) => toProtoEvent({ ...head, event }).failed;
  assertEquals(failed({ type: "failed", reason: "full", kind: "resource_exhausted" }), {
    reason: "full",
    code: status.RESOURCE_EXHAUSTED,
  });
  assertEquals(failed({ type: "failed", reason: "old" })?.code, status.UNKNOWN);
});
