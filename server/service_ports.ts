/**
 * The RPC layer's ports (`server/rpc/ports.ts`) implemented over the domain (`App`): training jobs,
 * the task registry and the serving path. Domain errors are given their kind here, once.
 */
import type { App, JobPayload } from "./app.ts";
import { validateTemplate } from "./prompts/template.ts";
import {
  FingerprintMismatchError,
  parsePeftAdapter,
  TaskCorruptError,
  TaskNotFoundError,
  type TaskVersionMeta,
} from "./registry/mod.ts";
import type {
  GenerationInput,
  InferencePort,
  InferInput,
  InferOutcome,
  InferOutput,
  InferStreamItem,
  JobView,
  Page,
  PageRequest,
  RegisterTaskInput,
  ServicePorts,
  TaskView,
  TrainEvent,
  TrainEventBody,
  TrainingPort,
  TrainSubmission,
} from "./rpc/ports.ts";
import { PortError } from "./rpc/ports.ts";
import type { GenerationOptions } from "./serving/generation_options.ts";
import type { InferenceResult } from "./serving/inference_service.ts";
import { parseTrainingConfig, validateTrainingConfig } from "./training/config.ts";
import type { JobEvent, JobInfo } from "./training/jobs.ts";
import { JobQueueFullError } from "./training/jobs.ts";

/** Registry and queue errors with their kinds; anything else passes through. */
export function domainError(e: unknown): unknown {
  if (e instanceof TaskNotFoundError) return new PortError("not_found", e.message, { cause: e });
  if (e instanceof FingerprintMismatchError) {
    return new PortError("failed_precondition", e.message, { cause: e });
  }
  if (e instanceof TaskCorruptError) return new PortError("internal", e.message, { cause: e });
  if (e instanceof JobQueueFullError) {
    return new PortError("resource_exhausted", e.message, { cause: e });
  }
  return e;
}

async function mapped<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw domainError(e);
  }
}

function paged<T>(all: T[], page: PageRequest): Page<T> {
  const start = page.pageToken ? Number(page.pageToken) : 0;
  if (!Number.isInteger(start) || start < 0 || start > all.length) {
    throw new PortError(
      "invalid_argument",
      `page_token is not a token this service issued: ${JSON.stringify(page.pageToken)}`,
    );
  }
  const items = all.slice(start, start + page.pageSize);
  const next = start + items.length;
  return { items, nextPageToken: next < all.length ? String(next) : "" };
}

/** Progress the job view shows, kept up to date from each job's events. */
interface JobProgress {
  tasks: string[];
  step: number;
  totalSteps: number;
  written: { task: string; version: number }[];
}

function toBody(p: JobPayload, progress: JobProgress): TrainEventBody | null {
  switch (p.type) {
    case "queued":
      return { type: "queued", position: p.position };
    case "started":
      return {
        type: "started",
        totalSteps: p.totalSteps,
        totalEpochs: 0,
        tasks: progress.tasks,
      };
    case "step":
      return {
        type: "step",
        step: p.step,
        epoch: p.epoch,
        loss: p.loss,
        learningRate: p.learningRate,
        tokensPerSecond: p.tokensPerSecond,
        etaSeconds: p.etaSeconds,
        totalSteps: progress.totalSteps,
      };
    case "validation":
      return { type: "validation", step: p.step, epoch: 0, loss: p.loss, metrics: p.metrics };
    case "checkpoint":
      return { type: "checkpoint", step: p.step, kind: p.best ? "best" : "latest" };
    case "completed":
      return {
        type: "completed",
        written: p.versions.map((v) => ({ task: v.name, version: v.version })),
        metrics: p.metrics,
      };
    case "failed":
      return { type: "failed", reason: p.reason };
    case "cancelled":
      return { type: "cancelled" };
    default:
      // job_started, data, early_stopped: bookkeeping the proto has no event for.
      return null;
  }
}

class Training implements TrainingPort {
  readonly #progress = new Map<string, JobProgress>();
  constructor(readonly app: App) {}

  #view(info: JobInfo): JobView {
    const p = this.#progress.get(info.id) ?? { tasks: [], step: 0, totalSteps: 0, written: [] };
    const state = info.state === "completed" ? "succeeded" : info.state;
    return {
      id: info.id,
      state,
      tasks: p.tasks,
      createdAt: new Date(info.createdAt),
      startedAt: info.startedAt ? new Date(info.startedAt) : undefined,
      finishedAt: info.finishedAt ? new Date(info.finishedAt) : undefined,
      step: p.step,
      totalSteps: p.totalSteps,
      lastSequence: info.lastSequence,
      error: info.error,
      written: p.written,
    };
  }

  /** The queue forgets old finished jobs; so does the progress kept beside them. */
  #forgetOld(): void {
    const live = new Set(this.app.jobs.list().map((j) => j.id));
    for (const id of this.#progress.keys()) if (!live.has(id)) this.#progress.delete(id);
  }

  #info(id: string): JobInfo {
    const info = this.app.jobs.get(id);
    if (!info) throw new PortError("not_found", `job_id: no job "${id}"`);
    return info;
  }

  start(sub: TrainSubmission, _signal: AbortSignal): Promise<JobView> {
    return mapped(() => {
      const inlineTrainData = sub.inlineRecords.train.length > 0;
      const config = sub.source.kind === "yaml"
        ? parseTrainingConfig(sub.source.text, { file: "config_yaml", inlineTrainData }).config
        : validateTrainingConfig(sub.source.config, { inlineTrainData }).config;
      const progress: JobProgress = {
        tasks: config.model.new_tasks,
        step: 0,
        totalSteps: 0,
        written: [],
      };
      const info = this.app.startTraining(config, {
        inline: { train: sub.inlineRecords.train, validation: sub.inlineRecords.validation },
        observe: (p) => {
          if (p.type === "started") progress.totalSteps = p.totalSteps;
          if (p.type === "step") progress.step = p.step;
          if (p.type === "completed") {
            progress.written = p.versions.map((v) => ({ task: v.name, version: v.version }));
          }
        },
      });
      this.#forgetOld();
      this.#progress.set(info.id, progress);
      return Promise.resolve(this.#view(info));
    });
  }

  get(id: string): Promise<JobView> {
    return Promise.resolve().then(() => this.#view(this.#info(id)));
  }

  list(page: PageRequest): Promise<Page<JobView>> {
    return Promise.resolve().then(() => {
      const all = this.app.jobs.list().sort((a, b) => b.createdAt.localeCompare(a.createdAt));
      this.#forgetOld();
      return paged(all.map((j) => this.#view(j)), page);
    });
  }

  cancel(id: string): Promise<JobView> {
    return Promise.resolve().then(() => {
      this.#info(id);
      this.app.jobs.cancel(id);
      return this.#view(this.#info(id));
    });
  }

  async *events(id: string, afterSequence: number, signal: AbortSignal): AsyncIterable<TrainEvent> {
    this.#info(id);
    const progress = this.#progress.get(id) ?? { tasks: [], step: 0, totalSteps: 0, written: [] };
    for await (
      const ev of this.app.jobs.watch(id, afterSequence, signal) as AsyncIterable<
        JobEvent<JobPayload>
      >
    ) {
      const body = toBody(ev.payload, progress);
      if (body) yield { sequence: ev.sequence, jobId: ev.jobId, time: new Date(ev.time), body };
    }
  }
}

function taskView(m: TaskVersionMeta, versions: number[]): TaskView {
  const f = m.fingerprint;
  return {
    name: m.name,
    version: m.version,
    template: m.template,
    totalVirtualTokens: m.totalVirtualTokens,
    hiddenSize: m.hiddenSize,
    baseModelFingerprint: `h=${f.hiddenSize} v=${f.vocabSize} sha256=${f.weightsHash}`,
    metrics: m.metrics,
    createdAt: new Date(m.createdAt),
    versions,
    hasEncoderState: m.encoderKind !== undefined,
    source: m.source,
  };
}

class Tasks {
  constructor(readonly app: App) {}

  register(input: RegisterTaskInput, _signal: AbortSignal): Promise<TaskView> {
    const rt = this.app.runtime;
    return mapped(async () => {
      if (input.createOnly && (await rt.store.has(input.name))) {
        throw new PortError("already_exists", `name: task "${input.name}" already exists`);
      }
      let draft;
      if (input.source.kind === "peft") {
        draft = parsePeftAdapter({
          configJson: new TextDecoder().decode(input.source.adapterConfigJson),
          safetensorsBytes: input.source.adapterSafetensors,
          where: "peft_adapter",
        }, {
          name: input.name,
          fingerprint: rt.fingerprint,
          promptTemplate: input.template?.prompt_template,
        });
      } else {
        const src = input.source;
        const template = validateTemplate({ ...input.template, taskname: input.name }, "template");
        if (src.rows !== template.total_virtual_tokens) {
          throw new PortError(
            "invalid_argument",
            `table.rows must equal template.total_virtual_tokens (${template.total_virtual_tokens}): found ${src.rows}`,
          );
        }
        if (src.hidden !== rt.model.config.nEmbd) {
          throw new PortError(
            "invalid_argument",
            `table.hidden must equal the model's hidden size (${rt.model.config.nEmbd}): found ${src.hidden}`,
          );
        }
        draft = {
          template,
          totalVirtualTokens: src.rows,
          hiddenSize: src.hidden,
          table: src.values,
          fingerprint: rt.fingerprint,
          source: "register" as const,
        };
      }
      const v = await rt.store.put(input.name, draft);
      return taskView(v, await rt.store.versions(input.name));
    });
  }

  get(name: string, version?: number): Promise<TaskView> {
    const store = this.app.runtime.store;
    return mapped(async () =>
      taskView(await store.describe(name, version), await store.versions(name))
    );
  }

  list(page: PageRequest): Promise<Page<TaskView>> {
    const store = this.app.runtime.store;
    return mapped(async () => {
      const p = await store.list({ pageSize: page.pageSize, pageToken: page.pageToken });
      const items: TaskView[] = [];
      for (const s of p.tasks) {
        if (s.latest) items.push(taskView(s.latest, await store.versions(s.name)));
      }
      return { items, nextPageToken: p.nextPageToken };
    });
  }

  delete(name: string): Promise<{ name: string; versionsDeleted: number[] }> {
    const store = this.app.runtime.store;
    return mapped(async () => {
      const versions = await store.versions(name);
      if (versions.length === 0) throw new PortError("not_found", `name: no task "${name}"`);
      await store.delete(name);
      return { name, versionsDeleted: versions };
    });
  }
}

function options(o: GenerationInput): GenerationOptions {
  return {
    maxNewTokens: o.maxNewTokens,
    minNewTokens: o.minNewTokens,
    doSample: o.doSample,
    temperature: o.temperature,
    topK: o.topK,
    topP: o.topP,
    seed: o.seed,
    repetitionPenalty: o.repetitionPenalty,
    stop: o.stop,
    logprobs: o.logprobs,
  };
}

class Inference implements InferencePort {
  constructor(readonly app: App) {}

  #output(r: InferenceResult): InferOutput {
    const tok = this.app.runtime.tokenizer;
    return {
      text: r.text,
      tokenIds: r.tokenIds,
      finishReason: r.finishReason,
      logprobs: r.logprobs,
      tokenTexts: r.logprobs ? r.tokenIds.map((t) => tok.decode([t])) : undefined,
      promptTokens: r.promptTokens,
      version: r.version,
    };
  }

  async infer(requests: InferInput[], signal: AbortSignal): Promise<InferOutcome[]> {
    const items = await this.app.inference.inferMany(
      requests.map((r) => ({
        task: r.task,
        version: r.version,
        fields: r.fields,
        options: options(r.options),
      })),
      signal,
    );
    return items.map((it) =>
      it.ok
        ? { ok: true, result: this.#output(it.result) }
        : { ok: false, error: domainError(it.error) as Error }
    );
  }

  async *stream(request: InferInput, signal: AbortSignal): AsyncIterable<InferStreamItem> {
    try {
      const task = await this.app.runtime.store.describe(request.task, request.version);
      for await (
        const ev of this.app.inference.inferStream(
          {
            task: request.task,
            version: task.version,
            fields: request.fields,
            options: options(request.options),
          },
          signal,
        )
      ) {
        if (ev.type === "token") {
          yield { type: "token", tokenId: ev.tokenId, text: ev.text, logprob: ev.logprob };
        } else {yield {
            type: "done",
            result: this.#output({ ...ev.result, task: task.name, version: task.version }),
          };}
      }
    } catch (e) {
      throw domainError(e);
    }
  }
}

export function servicePorts(app: App): ServicePorts {
  return { training: new Training(app), tasks: new Tasks(app), inference: new Inference(app) };
}
