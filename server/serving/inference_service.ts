/**
 * Inference for named tasks: resolve the task version (metadata only), fill its template (prompt
 * only), make its prompt table resident in a slot (reading the table from the registry only when
 * the slot misses), map the virtual ids to slot rows and hand the request to the scheduler, which
 * batches it with whatever else is running.
 */
import type { Tokenizer } from "../model/tokenizer.ts";
import { answerIds, sharedPrefixIds, tokenizeExample } from "../prompts/template.ts";
import type { TaskTemplate } from "../prompts/template_types.ts";
import { cancelled, invalidArgument, resourceExhausted } from "../errors.ts";
import type { GenerationOptions } from "./generation_options.ts";
import type { PromptSlots, ServableTable, SlotLease } from "./prompt_slots.ts";
import {
  checkAnswerCount,
  type GenerationResult,
  type PromptPrefix,
  type Scheduler,
  type StreamEvent,
} from "./scheduler.ts";

/** What serving needs of a registry task version (`TaskVersionMeta` satisfies it). */
export interface ServedTask extends ServableTable {
  template: TaskTemplate;
}

export interface InferenceRequest {
  task: string;
  /** Default: the task's latest version. */
  version?: number;
  /** Template fields by name; the answer field may be left out. */
  fields: Readonly<Record<string, string>>;
  options?: GenerationOptions;
  /**
   * Candidate answers to rank instead of generating (generation options are not used): each is
   * scored as the task's answer after its prompt, its leading space and EOS as training has them.
   */
  choices?: readonly string[];
  /**
   * Constrained generation: the output is one of these answers (tokens are chosen, greedily or
   * sampled, among those that keep it on one), encoded as `choices` are.
   */
  allowed?: readonly string[];
}

/** One candidate answer's score. */
export interface ChoiceScore {
  text: string;
  /** Its ids as scored (the answer field's leading space and EOS included). */
  tokenIds: number[];
  /** The sum of its tokens' log-probabilities. */
  logprob: number;
  /** `logprob` over its number of tokens. */
  logprobPerToken: number;
  /** exp(logprob) normalised over the request's candidates. */
  probability: number;
}

export interface InferenceResult extends GenerationResult {
  task: string;
  version: number;
  /** The text of each generated token, aligned with tokenIds (when logprobs were asked for). */
  tokenTexts?: string[];
  /** With choices: every candidate's score, in the order given. */
  choices?: ChoiceScore[];
}

/** Stream events; the final one names the task version that served the request. */
export type InferenceStreamEvent =
  | Extract<StreamEvent, { type: "token" }>
  | { type: "done"; result: InferenceResult };

export type InferManyItem =
  | { ok: true; result: InferenceResult }
  | { ok: false; error: Error };

export interface InferenceServiceOptions {
  /**
   * Resolves a task version to its metadata (`TaskStore.describe`: cheap, no tensors). Its errors
   * (not found, corrupt, fingerprint mismatch) pass through with their kinds.
   */
  describeTask: (name: string, version?: number) => Promise<ServedTask>;
  /** Reads a version's table (`TaskStore.get`): called only when its slot misses. */
  loadTable: (name: string, version: number) => Promise<Float32Array>;
  tokenizer: Tokenizer;
  slots: PromptSlots;
  scheduler: Scheduler;
  /** Requests in one `inferMany()` call. Default 64. */
  maxBatchRequests?: number;
}

interface Prepared {
  task: ServedTask;
  lease: SlotLease;
  promptIds: Int32Array;
  /** The task version's shared prompt prefix, when the prompt starts with it. */
  prefix?: PromptPrefix;
}

export class InferenceService {
  readonly #opts: InferenceServiceOptions;
  readonly #loading = new Map<string, Promise<Float32Array>>();
  /** Each task version's shared prompt prefix (task-relative ids), by name@version#checksum. */
  readonly #prefixIds = new Map<string, number[]>();
  #active = 0;

  constructor(opts: InferenceServiceOptions) {
    if (opts.slots.vocabSize !== opts.tokenizer.vocabSize) {
      throw new RangeError(
        `InferenceService: the tokenizer's vocabSize (${opts.tokenizer.vocabSize}) must equal the prompt slots' (${opts.slots.vocabSize})`,
      );
    }
    this.#opts = opts;
    // A prefix cached for a table is forgotten with its slot.
    opts.slots.onEvict((residency) => opts.scheduler.forgetPrefix(residency));
  }

  /**
   * Requests accepted and not yet answered, from their first step (a task's table may still be
   * loading, and the scheduler has not seen them yet): serving is busy while there are any.
   */
  get active(): number {
    return this.#active;
  }

  async infer(req: InferenceRequest, signal?: AbortSignal): Promise<InferenceResult> {
    this.#active++;
    try {
      return await this.#infer(req, signal);
    } finally {
      this.#active--;
    }
  }

  async #infer(req: InferenceRequest, signal?: AbortSignal): Promise<InferenceResult> {
    if (req.choices !== undefined) return await this.#score(req, signal);
    const allowed = this.#checkAnswers(req.allowed, "allowed");
    const p = await this.#prepare(req, signal);
    const result = await this.#opts.scheduler.submit(
      {
        promptIds: p.promptIds,
        prefix: p.prefix,
        options: req.options,
        ...(allowed ? { allowed: this.#answerIds(p.task, allowed) } : {}),
        onDone: () => p.lease.release(),
      },
      signal,
    );
    return this.#result(p.task, result, allowed);
  }

  /** Token events, then "done" with the result, which names the task version that served it. */
  async *inferStream(
    req: InferenceRequest,
    signal?: AbortSignal,
  ): AsyncGenerator<InferenceStreamEvent> {
    this.#active++;
    try {
      yield* this.#inferStream(req, signal);
    } finally {
      this.#active--;
    }
  }

  async *#inferStream(
    req: InferenceRequest,
    signal?: AbortSignal,
  ): AsyncGenerator<InferenceStreamEvent> {
    // Candidates are scored in one step: the stream is their result alone.
    if (req.choices !== undefined) {
      yield { type: "done", result: await this.#score(req, signal) };
      return;
    }
    const allowed = this.#checkAnswers(req.allowed, "allowed");
    const p = await this.#prepare(req, signal);
    for await (
      const ev of this.#opts.scheduler.stream(
        {
          promptIds: p.promptIds,
          prefix: p.prefix,
          options: req.options,
          ...(allowed ? { allowed: this.#answerIds(p.task, allowed) } : {}),
          onDone: () => p.lease.release(),
        },
        signal,
      )
    ) {
      yield ev.type === "done"
        ? { type: "done", result: this.#result(p.task, ev.result, allowed) }
        : ev;
    }
  }

  /**
   * Submits all requests at once (so they share batches) and returns their outcomes in order; one
   * request's failure does not affect the others. Refuses more than `maxBatchRequests` at once.
   */
  async inferMany(
    reqs: readonly InferenceRequest[],
    signal?: AbortSignal,
  ): Promise<InferManyItem[]> {
    const max = this.#opts.maxBatchRequests ?? 64;
    if (reqs.length === 0) throw invalidArgument("requests must hold at least one request");
    if (reqs.length > max) {
      throw resourceExhausted(
        `requests must hold at most ${max} requests (max_infer_batch): found ${reqs.length}`,
        "max_infer_batch",
      );
    }
    return await Promise.all(reqs.map((r) =>
      this.infer(r, signal).then(
        (result): InferManyItem => ({ ok: true, result }),
        (e): InferManyItem => ({ ok: false, error: e instanceof Error ? e : new Error(String(e)) }),
      )
    ));
  }

  /**
   * Checks candidate answers (`choices` or `allowed`) before any tokenizing: their number and
   * their size in characters. Returns them, or undefined when none were given.
   */
  #checkAnswers(
    answers: readonly string[] | undefined,
    field: string,
  ): readonly string[] | undefined {
    if (answers === undefined) return undefined;
    const { maxChoices, maxChoiceTokens } = this.#opts.scheduler.limits;
    checkAnswerCount(answers, field, maxChoices);
    for (const [i, c] of answers.entries()) {
      if (typeof c !== "string" || c.length > maxChoiceTokens * MAX_CHARS_PER_TOKEN) {
        throw invalidArgument(
          `${field}[${i}] must be a string of at most ${
            maxChoiceTokens * MAX_CHARS_PER_TOKEN
          } characters (max_choice_tokens ${maxChoiceTokens} x ${MAX_CHARS_PER_TOKEN}): found ${
            typeof c === "string" ? `${c.length} characters` : typeof c
          }`,
          "max_choice_tokens",
        );
      }
    }
    return answers;
  }

  /** Each answer's ids as the task's answer field after its prompt. */
  #answerIds(task: ServedTask, answers: readonly string[]): Int32Array[] {
    return answers.map((a) => Int32Array.from(answerIds(task.template, a, this.#opts.tokenizer)));
  }

  /** Ranks `req.choices` after the request's prompt. */
  async #score(req: InferenceRequest, signal?: AbortSignal): Promise<InferenceResult> {
    const choices = this.#checkAnswers(req.choices, "choices")!;
    const p = await this.#prepare(req, signal);
    const ids = this.#answerIds(p.task, choices).map((x) => Array.from(x));
    const r = await this.#opts.scheduler.score(
      {
        promptIds: p.promptIds,
        prefix: p.prefix,
        choices: ids.map((x) => Int32Array.from(x)),
        onDone: () => p.lease.release(),
      },
      signal,
    );
    const totals = r.tokenLogprobs.map((lp) => lp.reduce((a, b) => a + b, 0));
    const top = Math.max(...totals);
    const norm = totals.reduce((s, t) => s + Math.exp(t - top), 0);
    const scores: ChoiceScore[] = choices.map((text, i) => ({
      text,
      tokenIds: ids[i],
      logprob: totals[i],
      logprobPerToken: totals[i] / ids[i].length,
      probability: Math.exp(totals[i] - top) / norm,
    }));
    const best = totals.indexOf(top);
    return {
      task: p.task.name,
      version: p.task.version,
      text: choices[best],
      tokenIds: ids[best],
      finishReason: "choice",
      promptTokens: r.promptTokens,
      seed: 0,
      choices: scores,
    };
  }

  /** A task version's shared prompt prefix, computed once per version. */
  #sharedPrefix(task: ServedTask): number[] {
    const key = `${task.name}@${task.version}#${task.checksum ?? ""}`;
    let ids = this.#prefixIds.get(key);
    if (!ids) {
      if (this.#prefixIds.size >= 4096) this.#prefixIds.clear();
      ids = sharedPrefixIds(task.template, this.#opts.tokenizer);
      this.#prefixIds.set(key, ids);
    }
    return ids;
  }

  /** The table of a task whose slot missed; concurrent misses of one version share one read. */
  #load(task: ServedTask): Promise<Float32Array> {
    const key = `${task.name}@${task.version}#${task.checksum ?? ""}`;
    let p = this.#loading.get(key);
    if (!p) {
      p = this.#opts.loadTable(task.name, task.version).finally(() => this.#loading.delete(key));
      this.#loading.set(key, p);
    }
    return p;
  }

  #result(task: ServedTask, r: GenerationResult, allowed?: readonly string[]): InferenceResult {
    const tok = this.#opts.tokenizer;
    return {
      task: task.name,
      version: task.version,
      ...r,
      // The allowed answer as the caller wrote it (the decoded tokens carry its leading space).
      ...(allowed && r.choice !== undefined ? { text: allowed[r.choice] } : {}),
      ...(r.logprobs ? { tokenTexts: r.tokenIds.map((t) => tok.decode([t])) } : {}),
    };
  }

  async #prepare(req: InferenceRequest, signal?: AbortSignal): Promise<Prepared> {
    checkRequest(req);
    if (signal?.aborted) throw cancelled();
    const task = await this.#opts.describeTask(req.task, req.version);
    if (signal?.aborted) throw cancelled();
    checkFieldSizes(req.fields, task);
    const r = tokenizeExample(task.template, req.fields, this.#opts.tokenizer, {
      forInference: true,
    });
    if (!r.ok) {
      const limit = r.reason === "too long" ? "max_seq_length" : "min_seq_length";
      const bound = r.reason === "too long"
        ? `at most ${task.template.max_seq_length}`
        : `at least ${task.template.min_seq_length}`;
      throw invalidArgument(
        `task ${task.name} v${task.version}: the filled prompt must be ${bound} tokens (the task's ${limit}): found ${r.length}`,
        limit,
      );
    }
    const ids = r.example.ids;
    const { slots } = this.#opts;
    const servable = slots.isResident(task) ? task : { ...task, table: await this.#load(task) };
    if (signal?.aborted) throw cancelled();
    const lease = slots.acquire(servable);
    try {
      const shared = this.#sharedPrefix(task);
      const starts = shared.length > 0 && shared.length <= ids.length &&
        shared.every((id, i) => ids[i] === id);
      return {
        task,
        lease,
        promptIds: lease.toGlobalIds(ids),
        ...(starts ? { prefix: { key: lease.residency, length: shared.length } } : {}),
      };
    } catch (e) {
      lease.release();
      throw e;
    }
  }
}

/**
 * A GPT-2 token spans a few characters (rarely more than 16), so text longer than this many
 * characters per allowed token cannot fit: it is refused before tokenizing, which would cost
 * seconds for megabytes of text.
 */
const MAX_CHARS_PER_TOKEN = 32;
const MAX_FIELDS = 64;

function checkFieldSizes(fields: Readonly<Record<string, string>>, task: ServedTask): void {
  const names = Object.keys(fields);
  if (names.length > MAX_FIELDS) {
    throw invalidArgument(`fields must hold at most ${MAX_FIELDS} entries: found ${names.length}`);
  }
  const max = task.template.max_seq_length * MAX_CHARS_PER_TOKEN;
  let total = 0;
  for (const n of names) total += n.length + (typeof fields[n] === "string" ? fields[n].length : 0);
  if (total > max) {
    throw invalidArgument(
      `fields must hold at most ${max} characters in all (task ${task.name}'s max_seq_length ${task.template.max_seq_length} x ${MAX_CHARS_PER_TOKEN}): found ${total}`,
      "max_seq_length",
    );
  }
}

function checkRequest(req: InferenceRequest): void {
  if (typeof req.task !== "string" || req.task.length === 0) {
    throw invalidArgument(`task must be a non-empty string: found ${JSON.stringify(req.task)}`);
  }
  if (req.version !== undefined && (!Number.isInteger(req.version) || req.version < 1)) {
    throw invalidArgument(`version must be an integer >= 1 when given: found ${req.version}`);
  }
  if (typeof req.fields !== "object" || req.fields === null || Array.isArray(req.fields)) {
    throw invalidArgument(
      `fields must be an object of strings: found ${JSON.stringify(req.fields)}`,
    );
  }
}
