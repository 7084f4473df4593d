/**
 * The service's metrics, named as Prometheus expects (units in the names, counters ending in
 * `_total`), so `/metrics` and an OTLP collector's Prometheus export show the same names. Each
 * instrument is created on every meter given (the OTLP SDK's, the `/metrics` endpoint's) and
 * every record goes to all of them.
 */
import type { Attributes, BatchObservableResult, Meter, Observable } from "@opentelemetry/api";

/** Seconds: from a fast unary call (sub-millisecond) to a long training stream. */
const RPC_SECONDS = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  300,
  1800,
];
/** Seconds: a request's wait for its first token (queueing and prefill). */
const FIRST_TOKEN_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Seconds between one sequence's tokens: one engine step each. */
const TOKEN_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
const SEQUENCES = [1, 2, 4, 8, 16, 32, 64, 128, 256];
const TOKENS = [1, 4, 16, 64, 256, 1024, 2048, 4096, 8192];
const STEP_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export interface Recorder {
  record(value: number, attributes?: Attributes): void;
}

/** Point-in-time figures read at each collection (a scrape, an OTLP export). */
export interface ObservedSources {
  /** The scheduler's queue: requests waiting, sequences running. */
  inference(): { queueDepth: number; running: number };
  /** The prompt slots' counters (cumulative) and occupancy. */
  slots(): { capacity: number; resident: number; hits: number; loads: number; evictions: number };
  /** The job queue (every replica's, with a shared database). */
  jobs(): Promise<{ waiting: number; running: number }>;
  /** Bytes of the frozen model's weights held in memory. */
  modelBytes: number;
}

/** One record call reaching every meter's instrument. */
function fan(parts: Recorder[]): Recorder {
  return { record: (v, a) => parts.forEach((p) => p.record(v, a)) };
}

export class ServiceMetrics {
  readonly rpcDuration: Recorder;
  readonly batchSize: Recorder;
  readonly stepTokens: Recorder;
  readonly stepDuration: Recorder;
  readonly promptTokens: Recorder;
  readonly generatedTokens: Recorder;
  readonly prefixTokens: Recorder;
  readonly requests: Recorder;
  readonly timeToFirstToken: Recorder;
  readonly timePerOutputToken: Recorder;
  readonly trainingStep: Recorder;
  readonly trainingTokensPerSecond: Recorder;
  readonly trainingLoss: Recorder;
  readonly jobsEnded: Recorder;
  readonly jobStoreErrors: Recorder;
  readonly registryErrors: Recorder;
  readonly #meters: Meter[];

  constructor(meters: Meter[]) {
    this.#meters = meters;
    const histogram = (name: string, description: string, buckets: number[], unit?: string) =>
      fan(meters.map((m) =>
        m.createHistogram(name, {
          description,
          unit,
          advice: { explicitBucketBoundaries: buckets },
        })
      ));
    const counter = (name: string, description: string) =>
      fan(meters.map((m) => {
        const c = m.createCounter(name, { description });
        return { record: (v: number, a?: Attributes) => c.add(v, a) };
      }));
    const gauge = (name: string, description: string) =>
      fan(meters.map((m) => m.createGauge(name, { description })));

    this.rpcDuration = histogram(
      "rpc_server_duration_seconds",
      "Inbound RPCs by service, method and status code: latency (streams: until their last message); _count is the number of calls",
      RPC_SECONDS,
      "s",
    );
    this.batchSize = histogram(
      "promptlearning_inference_batch_size",
      "Sequences in one engine step",
      SEQUENCES,
    );
    this.stepTokens = histogram(
      "promptlearning_inference_step_tokens",
      "Rows one engine step computes (prompt rows being prefilled plus one per decoding sequence)",
      TOKENS,
    );
    this.stepDuration = histogram(
      "promptlearning_inference_step_duration_seconds",
      "Time one inference engine step takes",
      STEP_SECONDS,
      "s",
    );
    this.promptTokens = counter(
      "promptlearning_inference_prompt_tokens_total",
      "Prompt rows prefilled (computed, not taken from the prefix cache)",
    );
    this.prefixTokens = counter(
      "promptlearning_inference_prefix_cached_tokens_total",
      "Prompt rows taken from the prefix cache instead of computed",
    );
    this.generatedTokens = counter(
      "promptlearning_inference_generated_tokens_total",
      "Tokens generated (one per sequence per step)",
    );
    this.requests = counter(
      "promptlearning_inference_requests_total",
      "Generation requests finished, by finish_reason (length, stop, eos, choice)",
    );
    this.timeToFirstToken = histogram(
      "promptlearning_inference_time_to_first_token_seconds",
      "From a request entering the queue to its first generated token",
      FIRST_TOKEN_SECONDS,
      "s",
    );
    this.timePerOutputToken = histogram(
      "promptlearning_inference_time_per_output_token_seconds",
      "A request's mean time between generated tokens (requests of two tokens or more)",
      TOKEN_SECONDS,
      "s",
    );
    // Steps are reported at the job's logging interval, not each one: a gauge, as NeMo's
    // global_step scalar.
    this.trainingStep = gauge(
      "promptlearning_training_global_step",
      "The last reported optimizer step of the job this replica runs",
    );
    this.trainingTokensPerSecond = gauge(
      "promptlearning_training_tokens_per_second",
      "Training tokens per second in this replica's last step",
    );
    this.trainingLoss = gauge(
      "promptlearning_training_loss",
      "Training loss of this replica's last step",
    );
    this.jobsEnded = counter(
      "promptlearning_training_jobs_ended_total",
      "Jobs this replica ran to an end, by state (completed, failed, cancelled)",
    );
    this.jobStoreErrors = counter(
      "promptlearning_job_store_errors_total",
      "Job store failures (not its answers such as not found), by operation and kind",
    );
    this.registryErrors = counter(
      "promptlearning_registry_errors_total",
      "Registry failures (not its answers such as not found), by operation and kind",
    );
  }

  /** Gauges and counters read from `src` at each collection. */
  observe(src: ObservedSources): void {
    for (const m of this.#meters) {
      const g = (name: string, description: string, unit?: string) =>
        m.createObservableGauge(name, { description, unit });
      const c = (name: string, description: string) =>
        m.createObservableCounter(name, { description });
      const queue = g(
        "promptlearning_inference_queue_length",
        "Inference requests waiting to be scheduled",
      );
      const running = g(
        "promptlearning_inference_running_sequences",
        "Sequences being generated",
      );
      const hits = c(
        "promptlearning_prompt_slot_hits_total",
        "Requests whose task's prompt table was resident",
      );
      const misses = c(
        "promptlearning_prompt_slot_misses_total",
        "Prompt tables loaded into a slot (a request's task was not resident)",
      );
      const evictions = c(
        "promptlearning_prompt_slot_evictions_total",
        "Prompt tables evicted to make room for another task's",
      );
      const resident = g("promptlearning_prompt_slots_resident", "Prompt tables resident");
      const capacity = g("promptlearning_prompt_slots_capacity", "Prompt slots (PROMPT_SLOTS)");
      const waiting = g(
        "promptlearning_jobs_waiting",
        "Training jobs queued or orphaned (lease run out), waiting for a runner: what a training fleet scales on",
      );
      const jobsRunning = g("promptlearning_jobs_running", "Training jobs a runner holds");
      const model = g(
        "promptlearning_model_weights_bytes",
        "Bytes of the frozen model's weights held in memory",
      );
      const rss = g("process_resident_memory_bytes", "Resident memory of the whole process");
      const all: Observable[] = [
        queue,
        running,
        hits,
        misses,
        evictions,
        resident,
        capacity,
        waiting,
        jobsRunning,
        model,
        rss,
      ];
      m.addBatchObservableCallback(async (r: BatchObservableResult) => {
        const q = src.inference();
        r.observe(queue, q.queueDepth);
        r.observe(running, q.running);
        const s = src.slots();
        r.observe(hits, s.hits);
        r.observe(misses, s.loads);
        r.observe(evictions, s.evictions);
        r.observe(resident, s.resident);
        r.observe(capacity, s.capacity);
        r.observe(model, src.modelBytes);
        r.observe(rss, Deno.memoryUsage().rss);
        try {
          const j = await src.jobs();
          r.observe(waiting, j.waiting);
          r.observe(jobsRunning, j.running);
        } catch {
          // The store is away (a database restart): this collection has no job figures, and
          // the store's error counter has the failure.
        }
      }, all);
    }
  }
}
