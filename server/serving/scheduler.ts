/**
 * Continuous batching. Requests arrive independently; each step is schedule -> run -> update:
 *  - schedule: drop cancelled sequences, keep every running sequence (one decode token each) and
 *    admit waiting ones first-come-first-served while the batch and token budgets allow;
 *  - run: ONE engine call for the prefill prompts and decode tokens together (`ModelRunner`);
 *  - update: sample each sequence's next token, append it, retire finished sequences (freeing
 *    their KV cache and calling their `onDone`, which releases prompt-slot leases).
 * A request beyond a limit is refused at once with a `ServiceError` naming the limit; it never
 * waits in a queue it cannot leave.
 *
 * A request whose prompt starts with its task version's shared prefix (virtual tokens and fixed
 * template text) has that prefix's KV rows forked from a cache kept per prefix (`prefixCacheRows`),
 * computed by the first request that had it: only the rest of its prompt is prefilled.
 *
 * A scoring request (candidate answers to rank, `score()`) is admitted like a prompt to prefill;
 * in the same step, right after that engine call, its prompt's cache is forked once per candidate
 * and every candidate of every request admitted in the step is fed in ONE second engine call, with
 * logits at each row: the prompt is computed once, whatever the number of candidates.
 */
import { setImmediate } from "node:timers";
import type { Engine, KvCache } from "../model/engine.ts";
import { Channel } from "./_channel.ts";
import { createYielder, timerTurn } from "../util/event_loop.ts";
import { cancelled, invalidArgument, resourceExhausted, ServiceError } from "../errors.ts";
import {
  type GenerationOptions,
  resolveGenerationOptions,
  type SamplingParams,
} from "./generation_options.ts";
import { type BatchEntry, ModelRunner, type RunOutput, type TokenEmbedder } from "./runner.ts";
import { type SampledToken, SequenceSampler } from "../model/decoding/sampler.ts";
import { TokenTrie, type TrieCursor } from "../model/decoding/token_trie.ts";
import { type Decode, StopStringTracker } from "../model/decoding/stop_strings.ts";

export interface SchedulerLimits {
  /** Sequences in one step (running + admitted). Default 32. */
  maxBatchSize: number;
  /** Rows (prompt + decode tokens) fed to one engine call. Default 2048. */
  maxTokensPerStep: number;
  /** Requests waiting for admission; beyond it a request is refused. Default 256. */
  maxQueueLength: number;
  /** Largest `maxNewTokens` a request may ask for. Default 256. */
  maxNewTokens: number;
  /** `maxNewTokens` of a request that names none. Default 32. */
  defaultMaxNewTokens: number;
  /** Longest prompt (virtual tokens included). Default min(1024, maxTokensPerStep, n_positions - 1). */
  maxPromptLength: number;
  /** Default 16. */
  maxStopStrings: number;
  /** Default 256 characters. */
  maxStopStringLength: number;
  /** Candidate answers of one scoring request. Default 16. */
  maxChoices: number;
  /** Tokens of one candidate answer. Default 32. */
  maxChoiceTokens: number;
  /**
   * Candidate rows fed in one step's scoring call (each returns a row of vocabulary logits, so
   * this bounds its memory: 512 rows of GPT-2's 50,257 are 100 MiB). Default 512.
   */
  maxScoreRowsPerStep: number;
}

export interface SchedulerOptions {
  engine: Engine;
  /** Embeds the global ids of prompts and generated tokens: the `PromptSlots`. */
  embedder: TokenEmbedder;
  /** Token ids -> text (`Tokenizer.decode`). */
  decode: Decode;
  /** Default: the model config's eos_token_id. */
  eosId?: number;
  limits?: Partial<SchedulerLimits>;
  /** Milliseconds clock for step timing. Default `performance.now`. */
  now?: () => number;
  /** Seeds requests that give none. Default: crypto random. */
  randomSeed?: () => number;
  /** Called after every step (telemetry hooks in here). */
  onStep?: (stats: StepStats) => void;
  /** Called when a generation request finishes with a result (telemetry's latency figures). */
  onFinished?: (stats: FinishedStats) => void;
  /**
   * true (default): a loop steps whenever there is work. false: the owner calls `step()` (tests
   * drive the schedule deterministically this way).
   */
  autoRun?: boolean;
  /**
   * How the loop lets other work (new RPCs, aborts) in between the steps of an engine that
   * computes on this thread (one that computes elsewhere leaves the event loop free while it
   * does). Default: a 0 ms timer.
   */
  yieldToEventLoop?: () => Promise<void>;
  /**
   * KV rows of shared prompt prefixes kept at most, all prefixes together (the least recently used
   * goes first). Default 0: none kept.
   */
  prefixCacheRows?: number;
}

/** A prompt's first rows shared by every request of a task version (SlotLease.residency). */
export interface PromptPrefix {
  key: number;
  length: number;
}

export interface GenerateRequest {
  /**
   * Global ids: real tokens (< vocab) and prompt-slot rows (see `PromptSlots`), already mapped
   * from task-relative virtual ids.
   */
  promptIds: Int32Array;
  options?: GenerationOptions;
  /**
   * Constrained decoding: each allowed answer's token ids. Every token is chosen among those
   * that keep the output on one of them, and the sequence ends when it has one whole (reason
   * "choice"); its length is the longest answer's, whatever maxNewTokens says.
   */
  allowed?: readonly Int32Array[];
  /** `promptIds` start with this shared prefix: its KV rows may come from the prefix cache. */
  prefix?: PromptPrefix;
  /**
   * Called exactly once when the scheduler no longer needs the request's ids, whatever the
   * outcome (refused, cancelled, failed, finished): releases its prompt-slot lease.
   */
  onDone?: () => void;
}

/** "choice": the text is one of the request's candidate answers (the best scored). */
export type FinishReason = "length" | "stop" | "eos" | "choice";

/** Candidate answers to rank after a prompt, instead of generating. */
export interface ScoreRequest {
  /** Global ids, as GenerateRequest's. */
  promptIds: Int32Array;
  /** Each candidate's token ids (real tokens, below the vocabulary size), at least one each. */
  choices: readonly Int32Array[];
  /** As GenerateRequest's. */
  prefix?: PromptPrefix;
  /** As GenerateRequest's: called exactly once when the ids are no longer needed. */
  onDone?: () => void;
}

export interface ScoreResult {
  /**
   * Per candidate, the log-probability of each of its tokens given the prompt and the tokens
   * before it (log-softmax of the model's logits: no temperature or penalty).
   */
  tokenLogprobs: number[][];
  promptTokens: number;
}

export interface GenerationResult {
  /** Decoded generated text (EOS excluded; cut before a stop string). */
  text: string;
  /** Every generated id, EOS and the tokens of a stop string included. */
  tokenIds: number[];
  finishReason: FinishReason;
  /** Aligned with tokenIds; present when options.logprobs. */
  logprobs?: number[];
  promptTokens: number;
  /** The PRNG seed used (the caller's, or the one drawn for it). */
  seed: number;
  /** With `allowed`: the index of the allowed answer generated (finish reason "choice"). */
  choice?: number;
}

export type StreamEvent =
  | { type: "token"; tokenId: number; /** Newly final text. */ text: string; logprob?: number }
  | { type: "done"; result: GenerationResult };

export interface StepStats {
  step: number;
  /** Requests still waiting after this step's admissions. */
  queueDepth: number;
  /** Sequences still running after this step. */
  running: number;
  /** Sequences in this step's engine call. */
  batchSize: number;
  prefillSeqs: number;
  prefillTokens: number;
  /** Prompt rows taken from the prefix cache instead of computed. */
  prefixTokens: number;
  decodeTokens: number;
  /** Tokens generated in this step: one per sequence that is neither scoring nor cancelled. */
  generated: number;
  /** Sequences that finished (any reason) in this step. */
  finished: number;
  stepMs: number;
  /** Rows processed per second in this step (prefill + decode). */
  tokensPerSecond: number;
  /** Tokens generated per second in this step (one per sequence in the batch). */
  generatedPerSecond: number;
}

/** A finished generation request's latencies, on the scheduler's clock (ms). */
export interface FinishedStats {
  finishReason: FinishReason;
  promptTokens: number;
  generatedTokens: number;
  /** From enqueueing to the first generated token. */
  timeToFirstTokenMs: number;
  /** Mean time between its generated tokens; absent with fewer than two. */
  timePerOutputTokenMs?: number;
}

export interface SchedulerStats {
  queueDepth: number;
  running: number;
  steps: number;
  generatedTokens: number;
  /** Generated tokens per second of time spent in steps, over the scheduler's life. */
  generatedPerSecond: number;
}

interface Sink {
  onToken?: (ev: Extract<StreamEvent, { type: "token" }>) => void;
  resolve: (r: GenerationResult) => void;
  reject: (e: unknown) => void;
}

/** A scoring request's part of a Sequence: its candidates and where its answer goes. */
interface Scoring {
  choices: readonly Int32Array[];
  /** Rows its candidates take in the scoring call: every token but each one's last. */
  rows: number;
  resolve: (r: ScoreResult) => void;
}

interface Sequence {
  id: number;
  promptIds: Int32Array;
  /** Present for a scoring request: it ends in the step that prefills it. */
  scoring?: Scoring;
  /** Present for constrained decoding: where the output stands among the allowed answers. */
  constraint?: TrieCursor;
  /** The allowed answer completed. */
  choice?: number;
  prefix?: PromptPrefix;
  /** The ids its prefill feeds: the prompt, or what follows its cached prefix. */
  fed?: Int32Array;
  params: SamplingParams;
  sampler: SequenceSampler;
  tracker: StopStringTracker;
  tokenIds: number[];
  logprobs?: number[];
  cache?: KvCache;
  sink: Sink;
  /** The caller has its answer (result, refusal or cancellation). */
  settled: boolean;
  /** Cache freed and onDone called. */
  cleaned: boolean;
  cancelled: boolean;
  onDone?: () => void;
  detachAbort: () => void;
  /** Scheduler clock when it was enqueued, and when its first and last tokens came. */
  queuedAt: number;
  firstTokenAt?: number;
  lastTokenAt?: number;
}

const DEFAULT_LIMITS = {
  maxBatchSize: 32,
  maxTokensPerStep: 2048,
  maxQueueLength: 256,
  maxNewTokens: 256,
  defaultMaxNewTokens: 32,
  maxStopStrings: 16,
  maxStopStringLength: 256,
  maxChoices: 16,
  maxChoiceTokens: 32,
  maxScoreRowsPerStep: 512,
};

/**
 * How long steps on this thread may hold the event loop before the loop lets I/O in (a step that
 * starts before then runs to its end). 10 ms keeps health checks as responsive under load as a
 * yield after every step did (bench/health_bench.ts), and spares one request the 1-2 ms timer.
 */
const YIELD_EVERY_MS = 10;

export class Scheduler {
  readonly limits: Readonly<SchedulerLimits>;
  readonly #engine: Engine;
  readonly #runner: ModelRunner;
  readonly #decode: Decode;
  readonly #idLimit: number;
  readonly #eosId: number;
  readonly #now: () => number;
  readonly #randomSeed: () => number;
  readonly #onStep?: (stats: StepStats) => void;
  readonly #onFinished?: (stats: FinishedStats) => void;
  readonly #autoRun: boolean;
  readonly #yield: () => Promise<void>;
  readonly #waiting: Sequence[] = [];
  #running: Sequence[] = [];
  #nextId = 0;
  #stepping = false;
  #looping = false;
  #closed = false;
  #idleWaiters: (() => void)[] = [];
  #steps = 0;
  #generated = 0;
  #busyMs = 0;
  readonly #prefixLimit: number;
  readonly #prefixes = new Map<number, { cache: KvCache; rows: number; lastUsed: number }>();
  #prefixRows = 0;
  #prefixClock = 0;
  #idleAt = -Infinity;

  constructor(opts: SchedulerOptions) {
    this.#engine = opts.engine;
    this.#runner = new ModelRunner({
      engine: opts.engine,
      embedder: opts.embedder,
    });
    this.#decode = opts.decode;
    this.#idLimit = opts.embedder.idLimit;
    this.#eosId = opts.eosId ?? opts.engine.config.eosTokenId;
    this.#now = opts.now ?? (() => performance.now());
    this.#randomSeed = opts.randomSeed ??
      (() => crypto.getRandomValues(new Uint32Array(1))[0]);
    this.#onStep = opts.onStep;
    this.#onFinished = opts.onFinished;
    this.#autoRun = opts.autoRun ?? true;
    this.#yield = opts.yieldToEventLoop ?? timerTurn;
    this.limits = resolveLimits(opts.limits ?? {}, opts.engine.config.nPositions);
    this.#prefixLimit = opts.prefixCacheRows ?? 0;
    if (!Number.isInteger(this.#prefixLimit) || this.#prefixLimit < 0) {
      throw new RangeError(
        `Scheduler: prefixCacheRows must be an integer >= 0: found ${opts.prefixCacheRows}`,
      );
    }
  }

  /** Drops the cached prefix of `key` (its prompt slot went to another table). */
  forgetPrefix(key: number): void {
    const e = this.#prefixes.get(key);
    if (!e) return;
    this.#prefixes.delete(key);
    this.#prefixRows -= e.rows;
    e.cache.dispose();
  }

  /** Prefix rows kept now, and how many prefixes. */
  get prefixCache(): { rows: number; entries: number; maxRows: number } {
    return { rows: this.#prefixRows, entries: this.#prefixes.size, maxRows: this.#prefixLimit };
  }

  /** Generates for one request; rejects at once with a `ServiceError` when it is refused. */
  submit(request: GenerateRequest, signal?: AbortSignal): Promise<GenerationResult> {
    return new Promise((resolve, reject) => {
      this.#enqueue(request, signal, { resolve, reject });
    });
  }

  /**
   * Like `submit()`, yielding each token with its newly final text, then a "done" event. Leaving
   * the loop early cancels the request.
   */
  async *stream(request: GenerateRequest, signal?: AbortSignal): AsyncGenerator<StreamEvent> {
    const own = new AbortController();
    const combined = signal ? AbortSignal.any([signal, own.signal]) : own.signal;
    const channel = new Channel<StreamEvent>();
    this.#enqueue(request, combined, {
      onToken: (ev) => channel.push(ev),
      resolve: (result) => {
        channel.push({ type: "done", result });
        channel.close();
      },
      reject: (e) => channel.fail(e),
    });
    try {
      yield* channel;
    } finally {
      own.abort(cancelled("the stream's consumer stopped reading"));
    }
  }

  /**
   * Ranks candidate answers after a prompt: the log-probability of each of their tokens, computed
   * with the prompt's cache forked per candidate. Rejects at once when refused.
   */
  score(request: ScoreRequest, signal?: AbortSignal): Promise<ScoreResult> {
    return new Promise((resolve, reject) => {
      let scoring: Scoring;
      try {
        scoring = { choices: request.choices, rows: this.#checkChoices(request), resolve };
      } catch (e) {
        request.onDone?.();
        reject(e);
        return;
      }
      this.#enqueue(
        {
          promptIds: request.promptIds,
          prefix: request.prefix,
          onDone: request.onDone,
          options: { maxNewTokens: 1 },
        },
        signal,
        { resolve: () => {}, reject },
        scoring,
      );
    });
  }

  stats(): SchedulerStats {
    return {
      queueDepth: this.#waiting.length,
      running: this.#running.length,
      steps: this.#steps,
      generatedTokens: this.#generated,
      generatedPerSecond: this.#busyMs > 0 ? this.#generated / (this.#busyMs / 1000) : 0,
    };
  }

  /** True while requests wait or run. */
  get busy(): boolean {
    return this.#waiting.length > 0 || this.#running.length > 0;
  }

  /** Milliseconds since the scheduler last had work (0 while it has). */
  get idleMs(): number {
    return this.busy ? 0 : this.#now() - this.#idleAt;
  }

  /**
   * Refuses new requests ("unavailable") and resolves once the queued and running ones are done.
   * With `abort`, those are cancelled instead of finished.
   */
  close(opts: { abort?: boolean } = {}): Promise<void> {
    this.#closed = true;
    if (opts.abort) {
      for (const seq of [...this.#waiting, ...this.#running]) {
        this.#cancel(seq, new ServiceError("unavailable", "the server is shutting down"));
      }
    }
    // Once idle, nothing will fork a kept prefix again: its memory goes.
    const dropPrefixes = () => {
      for (const key of [...this.#prefixes.keys()]) this.forgetPrefix(key);
    };
    if (!this.busy) {
      dropPrefixes();
      return Promise.resolve();
    }
    this.#kick();
    return new Promise((resolve) =>
      this.#idleWaiters.push(() => {
        dropPrefixes();
        resolve();
      })
    );
  }

  /**
   * One schedule -> run -> update step. Returns its stats, or undefined when there was nothing to
   * do. Only one step runs at a time.
   */
  async step(): Promise<StepStats | undefined> {
    if (this.#stepping) throw new Error("Scheduler.step() is already running");
    this.#stepping = true;
    try {
      return await this.#stepOnce();
    } finally {
      this.#stepping = false;
      if (!this.busy) this.#notifyIdle();
    }
  }

  #enqueue(
    request: GenerateRequest,
    signal: AbortSignal | undefined,
    sink: Sink,
    scoring?: Scoring,
  ): void {
    let params: SamplingParams;
    let trie: TokenTrie | undefined;
    try {
      if (signal?.aborted) throw cancelled(abortMessage(signal));
      if (this.#closed) throw new ServiceError("unavailable", "the server is shutting down");
      params = resolveGenerationOptions(request.options ?? {}, this.limits, this.#randomSeed);
      if (request.allowed) {
        this.#checkChoices({ promptIds: request.promptIds, choices: request.allowed }, "allowed");
        trie = new TokenTrie(request.allowed);
        // An allowed answer is the whole output: no stop string may cut it short.
        params = { ...params, maxNewTokens: trie.longest, minNewTokens: 0, stop: [] };
      }
      const longest = scoring ? Math.max(...scoring.choices.map((c) => c.length)) : 0;
      this.#checkPrompt(request.promptIds, scoring ? { ...params, maxNewTokens: longest } : params);
      if (this.#waiting.length >= this.limits.maxQueueLength) {
        throw resourceExhausted(
          `the queue is full: ${this.#waiting.length} requests wait (max_queue_length ${this.limits.maxQueueLength})`,
          "max_queue_length",
        );
      }
    } catch (e) {
      request.onDone?.();
      sink.reject(e);
      return;
    }
    const V = this.#engine.config.vocabSize;
    const seq: Sequence = {
      id: this.#nextId++,
      promptIds: request.promptIds,
      prefix: request.prefix,
      scoring,
      constraint: trie?.start(),
      params,
      sampler: new SequenceSampler(params, request.promptIds, V, this.#eosId),
      tracker: new StopStringTracker(this.#decode, params.stop),
      tokenIds: [],
      logprobs: params.logprobs ? [] : undefined,
      sink,
      settled: false,
      cleaned: false,
      cancelled: false,
      onDone: request.onDone,
      detachAbort: () => {},
      // Read only for the latency figures: tests count the clock's readings.
      queuedAt: this.#onFinished ? this.#now() : 0,
    };
    if (signal) {
      const onAbort = () => this.#cancel(seq, cancelled(abortMessage(signal)));
      signal.addEventListener("abort", onAbort, { once: true });
      seq.detachAbort = () => signal.removeEventListener("abort", onAbort);
    }
    this.#waiting.push(seq);
    this.#kick();
  }

  /**
   * Checks a scoring request's candidates (or a constrained request's allowed answers, `field`);
   * returns the rows they take in the scoring call.
   */
  #checkChoices(request: ScoreRequest, field = "choices"): number {
    const { choices } = request;
    const { maxChoiceTokens, maxScoreRowsPerStep } = this.limits;
    checkAnswerCount(choices, field, this.limits.maxChoices);
    const V = this.#engine.config.vocabSize;
    let rows = 0;
    for (const [i, c] of choices.entries()) {
      if (c.length < 1 || c.length > maxChoiceTokens) {
        throw invalidArgument(
          `${field}[${i}] must be 1 to ${maxChoiceTokens} tokens (max_choice_tokens): found ${c.length}`,
          "max_choice_tokens",
        );
      }
      for (let t = 0; t < c.length; t++) {
        if (!(c[t] >= 0 && c[t] < V)) {
          throw invalidArgument(
            `${field}[${i}][${t}] must be a token id in [0, ${V}): found ${c[t]}`,
          );
        }
      }
      rows += c.length - 1;
    }
    if (field === "choices" && rows > maxScoreRowsPerStep) {
      throw invalidArgument(
        `the choices must take at most ${maxScoreRowsPerStep} tokens after their first (max_score_rows): found ${rows}`,
        "max_score_rows",
      );
    }
    return rows;
  }

  #checkPrompt(ids: Int32Array, params: SamplingParams): void {
    const n = ids.length;
    if (n === 0) throw invalidArgument("the prompt must hold at least one token: found 0");
    if (n > this.limits.maxPromptLength) {
      throw invalidArgument(
        `the prompt must be at most max_prompt_length (${this.limits.maxPromptLength}) tokens, virtual tokens included: found ${n}`,
        "max_prompt_length",
      );
    }
    // A bad id found only at embedding time would fail the whole batch it landed in.
    for (let i = 0; i < n; i++) {
      if (!(ids[i] >= 0 && ids[i] < this.#idLimit)) {
        throw invalidArgument(`promptIds[${i}] must be in [0, ${this.#idLimit}): found ${ids[i]}`);
      }
    }
    const nPos = this.#engine.config.nPositions;
    if (n + params.maxNewTokens > nPos) {
      throw invalidArgument(
        `prompt tokens + max_new_tokens must fit the model's n_positions (${nPos}): found ${n} + ${params.maxNewTokens} = ${
          n + params.maxNewTokens
        }`,
        "n_positions",
      );
    }
  }

  /** Settles the caller now; resources go at once if waiting, else at the next step. */
  #cancel(seq: Sequence, error: ServiceError): void {
    if (seq.settled) return;
    seq.cancelled = true;
    this.#settle(seq, undefined, error);
    const at = this.#waiting.indexOf(seq);
    if (at >= 0) {
      this.#waiting.splice(at, 1);
      this.#cleanup(seq);
      if (!this.busy) this.#notifyIdle();
    }
  }

  #settle(seq: Sequence, result: GenerationResult | undefined, error?: unknown): void {
    if (seq.settled) return;
    seq.settled = true;
    seq.detachAbort();
    if (result) seq.sink.resolve(result);
    else seq.sink.reject(error);
  }

  #cleanup(seq: Sequence): void {
    if (seq.cleaned) return;
    seq.cleaned = true;
    seq.cache?.dispose();
    seq.cache = undefined;
    seq.onDone?.();
  }

  #kick(): void {
    if (!this.#autoRun || this.#looping) return;
    this.#looping = true;
    void this.#loop();
  }

  async #loop(): Promise<void> {
    // `busy` and `#looping = false` are read and written in one synchronous stretch, so a request
    // submitted while the loop winds down always finds either a live loop or none.
    // Requests that become ready in the same event-loop turn as the one that woke the loop (a
    // call's requests whose tasks were described together) join its first step: an immediate
    // runs once this turn's microtasks are done, and costs microseconds where a timer costs 1-2 ms.
    await new Promise<void>((resolve) => setImmediate(resolve));
    // Deno runs I/O only while its event loop waits (immediates and messages starve it), and a
    // timer, the wait that lets it in, costs 1 to 2 ms (the 1 ms clamp and epoll's granularity): a
    // tenth of a decoding step. Spent only where a step holds this thread; an off-thread engine's
    // steps wait anyway.
    // On this thread, short steps (one request's decoding) run back to back until YIELD_EVERY_MS
    // have passed since I/O last ran.
    const yieldNow = this.#engine.offThread
      ? undefined
      : createYielder(YIELD_EVERY_MS, this.#now, this.#yield);
    while (this.busy) {
      try {
        await this.step();
      } catch (e) {
        this.#failAll(e);
      }
      await yieldNow?.();
    }
    this.#looping = false;
  }

  /** A bug surfaced from a step: nobody must be left hanging. */
  #failAll(e: unknown): void {
    const error = new ServiceError(
      "internal",
      `the scheduler failed: ${e instanceof Error ? e.message : String(e)}`,
      { cause: e },
    );
    for (const seq of [...this.#waiting, ...this.#running]) {
      this.#settle(seq, undefined, error);
      this.#cleanup(seq);
    }
    this.#waiting.length = 0;
    this.#running = [];
    this.#notifyIdle();
  }

  #notifyIdle(): void {
    this.#idleAt = this.#now();
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  async #stepOnce(): Promise<StepStats | undefined> {
    // schedule
    this.#running = this.#running.filter((s) => {
      if (s.cancelled) this.#cleanup(s);
      return !s.cancelled;
    });
    const decode = this.#running;
    const prefill: Sequence[] = [];
    let rows = decode.length, scoreRows = 0;
    let prefixTokens = 0;
    while (
      this.#waiting.length > 0 && decode.length + prefill.length < this.limits.maxBatchSize &&
      rows + this.#fedLength(this.#waiting[0]) <= this.limits.maxTokensPerStep &&
      scoreRows + (this.#waiting[0].scoring?.rows ?? 0) <= this.limits.maxScoreRowsPerStep
    ) {
      const seq = this.#waiting.shift()!;
      const hit = this.#cachedPrefix(seq);
      if (hit) {
        hit.lastUsed = ++this.#prefixClock;
        seq.cache = this.#engine.forkCache(hit.cache);
        seq.fed = seq.promptIds.subarray(hit.rows);
        prefixTokens += hit.rows;
      } else {
        seq.cache = this.#engine.newCache();
        seq.fed = seq.promptIds;
      }
      prefill.push(seq);
      rows += seq.fed.length;
      scoreRows += seq.scoring?.rows ?? 0;
    }
    const batch = [...decode, ...prefill];
    if (batch.length === 0) return undefined;
    this.#running = batch;
    const entries: BatchEntry[] = batch.map((s) => ({
      ids: s.tokenIds.length > 0
        ? Int32Array.of(s.tokenIds[s.tokenIds.length - 1])
        : s.fed ?? s.promptIds,
      cache: s.cache!,
      // What the engine reduces the last row to: the candidates' first tokens' log-probabilities
      // (scoring), or the next token as the request's sampler states it.
      picks: [
        s.scoring
          ? { targets: Int32Array.from(s.scoring.choices, (c) => c[0]) }
          : { token: s.sampler.spec(s.constraint?.allowed(this.#eosId)) },
      ],
    }));

    // run
    const t0 = this.#now();
    let out: RunOutput | undefined;
    try {
      out = await this.#runner.run(entries);
    } catch (e) {
      // The caches may hold a half-written step: these sequences cannot continue. Their callers
      // get the error; the scheduler carries on with the others.
      const error = new ServiceError(
        "internal",
        `the engine failed on a batch of ${batch.length}: ${
          e instanceof Error ? e.message : String(e)
        }`,
        { cause: e },
      );
      for (const seq of batch) this.#settle(seq, undefined, error);
    }

    // Prefixes computed whole for the first time are kept for the next requests that share them
    // (before scoring or decoding appends to these caches).
    if (out) { for (const seq of prefill) this.#keepPrefix(seq); }
    // The candidates of the scoring requests just prefilled, in one more call.
    const scored = out ? prefill.filter((s) => s.scoring && !s.cancelled) : [];
    if (out && scored.length > 0) await this.#scoreChoices(scored, out, batch);

    // update
    let finished = 0;
    const still: Sequence[] = [];
    const ended: [Sequence, FinishReason][] = [];
    for (const [i, seq] of batch.entries()) {
      if (!out || seq.cancelled || seq.scoring) {
        this.#cleanup(seq);
        finished++;
        continue;
      }
      const reason = this.#append(seq, out.picked[out.firstRow[i]] as SampledToken);
      if (reason) {
        this.#settle(seq, this.#result(seq, reason));
        ended.push([seq, reason]);
        this.#cleanup(seq);
        finished++;
      } else {
        still.push(seq);
      }
    }
    this.#running = still;
    const stepEnd = this.#now();
    const stepMs = stepEnd - t0;
    // A step's tokens all arrive as it ends.
    if (out && this.#onFinished) {
      for (const seq of batch) {
        if (seq.cancelled || seq.scoring) continue;
        seq.lastTokenAt = stepEnd;
        seq.firstTokenAt ??= stepEnd;
      }
      for (const [seq, reason] of ended) this.#finished(seq, reason);
    }
    this.#steps++;
    const generated = out ? batch.filter((s) => !s.scoring && !s.cancelled).length : 0;
    this.#generated += generated;
    this.#busyMs += stepMs;
    const prefillTokens = prefill.reduce((n, s) => n + (s.fed ?? s.promptIds).length, 0);
    const stats: StepStats = {
      step: this.#steps,
      queueDepth: this.#waiting.length,
      running: still.length,
      batchSize: batch.length,
      prefillSeqs: prefill.length,
      prefillTokens,
      prefixTokens,
      decodeTokens: decode.length,
      generated,
      finished,
      stepMs,
      tokensPerSecond: stepMs > 0 ? (prefillTokens + decode.length) / (stepMs / 1000) : 0,
      generatedPerSecond: stepMs > 0 ? batch.length / (stepMs / 1000) : 0,
    };
    this.#onStep?.(stats);
    return stats;
  }

  /** The cached prefix a waiting sequence's prefill may start from (leaving a row to feed). */
  #cachedPrefix(seq: Sequence) {
    const p = seq.prefix;
    if (!p || p.length >= seq.promptIds.length) return undefined;
    const hit = this.#prefixes.get(p.key);
    return hit && hit.rows === p.length ? hit : undefined;
  }

  /** Rows a waiting sequence's prefill would feed now. */
  #fedLength(seq: Sequence): number {
    const hit = this.#cachedPrefix(seq);
    return seq.promptIds.length - (hit ? hit.rows : 0);
  }

  /** After a whole prefill: keeps the prefix rows of its cache, evicting the least recently used. */
  #keepPrefix(seq: Sequence): void {
    const p = seq.prefix;
    if (
      !p || seq.cancelled || !seq.cache || p.length < 1 || p.length > this.#prefixLimit ||
      this.#prefixes.has(p.key) || seq.fed !== seq.promptIds
    ) return;
    while (this.#prefixRows + p.length > this.#prefixLimit) {
      let oldest: number | undefined, at = Infinity;
      for (const [k, e] of this.#prefixes) if (e.lastUsed < at) [oldest, at] = [k, e.lastUsed];
      this.forgetPrefix(oldest!);
    }
    const cache = this.#engine.forkCache(seq.cache, p.length);
    this.#prefixes.set(p.key, { cache, rows: p.length, lastUsed: ++this.#prefixClock });
    this.#prefixRows += p.length;
  }

  /**
   * Scores the candidates of `seqs` (prefilled by `first`): each candidate's first token from its
   * prompt's last row, the rest from one call over forks of the prompt caches. Settles each.
   */
  async #scoreChoices(
    seqs: Sequence[],
    first: RunOutput,
    batch: readonly Sequence[],
  ): Promise<void> {
    const entries: BatchEntry[] = [];
    const owners: { seq: Sequence; choice: number }[] = [];
    const forks: KvCache[] = [];
    const results = new Map<Sequence, number[][]>();
    for (const seq of seqs) {
      const row = first.firstRow[batch.indexOf(seq)];
      const firsts = (first.picked[row] as { logprobs: number[] }).logprobs;
      const choices = seq.scoring!.choices;
      results.set(seq, choices.map((_, k) => [firsts[k]]));
      const longer = choices.flatMap((c, k) => (c.length > 1 ? [k] : []));
      for (const [j, k] of longer.entries()) {
        // The prompt's own cache is not needed after this call: the last candidate takes it.
        const cache = j === longer.length - 1 ? seq.cache! : this.#engine.forkCache(seq.cache!);
        if (cache !== seq.cache) forks.push(cache);
        const c = choices[k];
        entries.push({
          ids: c.subarray(0, c.length - 1),
          cache,
          // Every row: row t (after the candidate's first t + 1 tokens) scores its token t + 1.
          picks: Array.from(
            { length: c.length - 1 },
            (_, t) => ({ targets: Int32Array.of(c[t + 1]) }),
          ),
        });
        owners.push({ seq, choice: k });
      }
    }
    try {
      if (entries.length > 0) {
        const out = await this.#runner.run(entries);
        for (const [e, { seq, choice }] of owners.entries()) {
          const c = seq.scoring!.choices[choice];
          const lp = results.get(seq)![choice];
          for (let t = 1; t < c.length; t++) {
            lp.push((out.picked[out.firstRow[e] + t - 1] as { logprobs: number[] }).logprobs[0]);
          }
        }
      }
      for (const seq of seqs) {
        if (seq.settled) continue;
        seq.detachAbort();
        seq.settled = true;
        seq.scoring!.resolve({
          tokenLogprobs: results.get(seq)!,
          promptTokens: seq.promptIds.length,
        });
      }
    } catch (e) {
      const error = new ServiceError(
        "internal",
        `the engine failed scoring ${entries.length} candidate answers: ${
          e instanceof Error ? e.message : String(e)
        }`,
        { cause: e },
      );
      for (const seq of seqs) this.#settle(seq, undefined, error);
    } finally {
      for (const f of forks) f.dispose();
    }
  }

  /** Appends the token picked for the sequence; returns why the sequence ends, if it does. */
  #append(seq: Sequence, picked: SampledToken): FinishReason | undefined {
    const c = seq.constraint;
    const { tokenId, logprob } = picked;
    seq.sampler.record(tokenId);
    seq.tokenIds.push(tokenId);
    if (seq.logprobs && logprob !== undefined) seq.logprobs.push(logprob);
    let reason: FinishReason | undefined;
    const completed = c ? c.take(tokenId, this.#eosId) : -1;
    if (completed >= 0) {
      seq.choice = completed;
      reason = "choice";
    } else if (tokenId === this.#eosId) reason = "eos";
    else if (seq.tracker.push(tokenId)) reason = "stop";
    else if (seq.tokenIds.length >= seq.params.maxNewTokens) reason = "length";
    if (seq.sink.onToken) {
      const ev: Extract<StreamEvent, { type: "token" }> = {
        type: "token",
        tokenId,
        text: seq.tracker.takeDelta(reason !== undefined),
      };
      if (logprob !== undefined) ev.logprob = logprob;
      seq.sink.onToken(ev);
    }
    return reason;
  }

  #finished(seq: Sequence, finishReason: FinishReason): void {
    if (!this.#onFinished) return;
    const n = seq.tokenIds.length;
    const first = seq.firstTokenAt!;
    const stats: FinishedStats = {
      finishReason,
      promptTokens: seq.promptIds.length,
      generatedTokens: n,
      timeToFirstTokenMs: first - seq.queuedAt,
    };
    if (n > 1) stats.timePerOutputTokenMs = (seq.lastTokenAt! - first) / (n - 1);
    this.#onFinished(stats);
  }

  #result(seq: Sequence, finishReason: FinishReason): GenerationResult {
    const r: GenerationResult = {
      text: seq.tracker.text,
      tokenIds: seq.tokenIds,
      finishReason,
      promptTokens: seq.promptIds.length,
      seed: seq.params.seed,
    };
    if (seq.logprobs) r.logprobs = seq.logprobs;
    if (seq.choice !== undefined) r.choice = seq.choice;
    return r;
  }
}

/**
 * Refuses candidate answers (`choices`, or `allowed` ones) that are not an array of 1 to
 * `maxChoices` entries, naming `field` and the limit. InferenceService checks the texts with it
 * before tokenizing them; the scheduler the token ids it is given.
 */
export function checkAnswerCount(answers: unknown, field: string, maxChoices: number): void {
  if (!Array.isArray(answers) || answers.length < 1 || answers.length > maxChoices) {
    throw invalidArgument(
      `${field} must hold 1 to ${maxChoices} candidate answers (max_choices): found ${
        Array.isArray(answers) ? answers.length : typeof answers
      }`,
      "max_choices",
    );
  }
}

function resolveLimits(given: Partial<SchedulerLimits>, nPositions: number): SchedulerLimits {
  const merged = { ...DEFAULT_LIMITS, ...given };
  merged.defaultMaxNewTokens = given.defaultMaxNewTokens ??
    Math.min(DEFAULT_LIMITS.defaultMaxNewTokens, merged.maxNewTokens);
  const maxPromptLength = given.maxPromptLength ??
    Math.min(1024, merged.maxTokensPerStep, nPositions - 1);
  const limits: SchedulerLimits = { ...merged, maxPromptLength };
  for (const [field, v] of Object.entries(limits)) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`Scheduler limits: ${field} must be a positive integer: found ${v}`);
    }
  }
  // Otherwise a prompt could be accepted that no step can ever hold.
  if (limits.maxPromptLength > limits.maxTokensPerStep) {
    throw new RangeError(
      `Scheduler limits: maxPromptLength (${limits.maxPromptLength}) must be at most maxTokensPerStep (${limits.maxTokensPerStep})`,
    );
  }
  if (limits.maxBatchSize > limits.maxTokensPerStep) {
    throw new RangeError(
      `Scheduler limits: maxBatchSize (${limits.maxBatchSize}) must be at most maxTokensPerStep (${limits.maxTokensPerStep})`,
    );
  }
  if (limits.defaultMaxNewTokens > limits.maxNewTokens) {
    throw new RangeError(
      `Scheduler limits: defaultMaxNewTokens (${limits.defaultMaxNewTokens}) must be at most maxNewTokens (${limits.maxNewTokens})`,
    );
  }
  return limits;
}

function abortMessage(signal: AbortSignal): string {
  const r: unknown = signal.reason;
  const why = r instanceof Error ? r.message : r === undefined ? "" : String(r);
  return why ? `the request was cancelled: ${why}` : "the request was cancelled";
}
