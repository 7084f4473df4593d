/**
 * The domain services over one resident runtime, wired once: training (its job queue), tasks (the
 * registry) and inference (prompt slots -> scheduler). `main.ts` serves them over gRPC; tests and
 * benches build the same services, with the in-memory store or a small engine where speed needs
 * it. Nothing here knows about gRPC.
 */
import { join } from "node:path";
import type { Runtime } from "./bootstrap.ts";
import { TaskService } from "./registry/task_service.ts";
import { InferenceService } from "./serving/inference_service.ts";
import { PromptSlots } from "./serving/prompt_slots.ts";
import {
  type FinishedStats,
  Scheduler,
  type SchedulerLimits,
  type StepStats,
} from "./serving/scheduler.ts";
import { EngineShare } from "./serving/engine_share.ts";
import type { ReplicaRole } from "./replica_role.ts";
import type { TrainingEvent } from "./training/events.ts";
import { DiskJobStore } from "./training/disk_job_store.ts";
import type { JobStore } from "./training/job_store.ts";
import { MemoryJobStore } from "./training/local_job_store.ts";
import { PgJobStore } from "./training/pg_job_store.ts";
import { TrainingService } from "./training/training_service.ts";
import { evaluationJobs } from "./evaluation/evaluation_job.ts";
import type { ErrorKind } from "./errors.ts";
import { countingFaults } from "./util/store_faults.ts";
import { kvRowBytes } from "./model/model_config.ts";

export interface ServicesOptions {
  /** Where dataset paths of training configs resolve; they must stay inside it. */
  dataDir: string;
  /** Where training checkpoints go. Default "runs". */
  runsDir?: string;
  maxQueuedJobs?: number;
  servingLimits?: Partial<SchedulerLimits>;
  /** Resident prompt tables (slots). Default DEFAULT_PROMPT_SLOTS. */
  maxSlots?: number;
  /** Rows per slot: the largest virtual-token count served. Default DEFAULT_MAX_VIRTUAL_TOKENS. */
  maxVirtualTokens?: number;
  /** Requests in one Infer call. Default 64. */
  maxInferBatch?: number;
  /** Memory for shared prompt prefixes' KV rows, in MiB. Default 0 (none kept). */
  prefixCacheMb?: number;
  /**
   * Training's guaranteed share of engine time while requests are served, in [0, 1]; above it a
   * training step waits for inference. Default DEFAULT_TRAINING_MIN_SHARE; 1: training never
   * waits.
   */
  trainingMinShare?: number;
  /** What this replica does (REPLICA_ROLE). Default both. */
  role?: ReplicaRole;
  /** Validation examples generated for metrics per validation. Default: all (NeMo). */
  valGenerateLimit?: number;
  onStep?: (s: StepStats) => void;
  /** Sees every finished generation request's latencies (telemetry). */
  onFinished?: (s: FinishedStats) => void;
  /** Sees the job store's and the registry's failures, not their answers (telemetry). */
  onStoreFault?: (store: "jobs" | "registry", operation: string, kind: ErrorKind) => void;
  /** Sees every training job's events (telemetry hooks in here). */
  onTrainingEvent?: (jobId: string, e: TrainingEvent) => void;
  /**
   * Without a database: keep jobs under `<runsDir>/.jobs` so a restart resumes them (the service
   * does). Default false: jobs live as long as the process.
   */
  durableJobs?: boolean;
  /** How long a runner's claim on a job lasts without a renewal. Default 15 s. */
  jobLeaseMs?: number;
  /** A job store to use instead of the one the runtime calls for (it stays the caller's). */
  jobs?: JobStore;
}

export interface Services {
  training: TrainingService;
  /** Where the jobs are: the replicas' database, `<runs>/.jobs`, or memory. */
  jobs: JobStore;
  tasks: TaskService;
  inference: InferenceService;
  scheduler: Scheduler;
  slots: PromptSlots;
  role: ReplicaRole;
  /**
   * Stops accepting work: stops training (the running job is released for the next runner with a
   * durable store, cancelled with the memory store) and finishes the inference in flight.
   */
  close(): Promise<void>;
}

/** The job store the runtime calls for: the database's, a directory's, or memory. */
async function openJobStore(rt: Runtime, opts: ServicesOptions): Promise<JobStore> {
  if (opts.jobs) return opts.jobs;
  if (rt.db) return await PgJobStore.open(rt.db);
  if (opts.durableJobs) return await DiskJobStore.open(join(opts.runsDir ?? "runs", ".jobs"));
  return new MemoryJobStore();
}

/** The serving path over a runtime: prompt slots -> scheduler -> inference (commands use it too). */
export function createInference(
  rt: Pick<Runtime, "model" | "tokenizer" | "engine" | "store">,
  opts: Pick<
    ServicesOptions,
    | "maxSlots"
    | "maxVirtualTokens"
    | "servingLimits"
    | "onStep"
    | "onFinished"
    | "maxInferBatch"
    | "prefixCacheMb"
  > = {},
): { slots: PromptSlots; scheduler: Scheduler; inference: InferenceService } {
  const { model, tokenizer, engine, store } = rt;
  const slots = new PromptSlots({
    vocabSize: model.config.vocabSize,
    hidden: model.config.nEmbd,
    wte: model.weights.wte,
    maxSlots: opts.maxSlots,
    maxVirtualTokens: opts.maxVirtualTokens,
  });
  const scheduler = new Scheduler({
    engine,
    embedder: slots,
    decode: (ids) => tokenizer.decode(ids),
    eosId: tokenizer.eosId,
    limits: opts.servingLimits,
    onStep: opts.onStep,
    onFinished: opts.onFinished,
    prefixCacheRows: Math.floor(((opts.prefixCacheMb ?? 0) * 2 ** 20) / kvRowBytes(model.config)),
  });
  const inference = new InferenceService({
    describeTask: (name, version) => store.describe(name, version),
    loadTable: async (name, version) => (await store.get(name, version)).table,
    tokenizer,
    slots,
    scheduler,
    maxBatchRequests: opts.maxInferBatch,
  });
  return { slots, scheduler, inference };
}

/** How long serving must have been idle before a training step may take the engine, in ms. */
const SERVING_IDLE_GRACE_MS = 30;

export async function createServices(runtime: Runtime, opts: ServicesOptions): Promise<Services> {
  const fault = opts.onStoreFault;
  const rt = fault
    ? { ...runtime, store: countingFaults(runtime.store, (op, k) => fault("registry", op, k)) }
    : runtime;
  const { model, tokenizer, engine, store, fingerprint } = rt;
  const { slots, scheduler, inference } = createInference(rt, opts);
  const ownJobs = await openJobStore(rt, opts);
  const jobs = fault ? countingFaults(ownJobs, (op, k) => fault("jobs", op, k)) : ownJobs;
  // Inference first: training's engine calls wait while requests are served, beyond its share.
  const share = new EngineShare({
    // Requests come in bursts: a moment's lull between them is not a time to start a step.
    servingBusy: () => inference.active > 0 || scheduler.idleMs < SERVING_IDLE_GRACE_MS,
    minTrainingShare: opts.trainingMinShare,
  });
  const training = new TrainingService({
    jobs,
    engine: share.forTraining(engine),
    tokenizer,
    store,
    fingerprint,
    dataDir: opts.dataDir,
    runsDir: opts.runsDir,
    maxQueuedJobs: opts.maxQueuedJobs,
    valGenerateLimit: opts.valGenerateLimit,
    maxVirtualTokens: slots.maxVirtualTokens,
    observe: opts.onTrainingEvent,
    jobLeaseMs: opts.jobLeaseMs,
    evaluations: evaluationJobs({
      infer: (reqs, signal) => inference.inferMany(reqs, signal),
      store,
      tokenizer,
      dataDir: opts.dataDir,
    }),
    log: (msg, fields) => console.log(JSON.stringify({ msg, ...fields })),
  });
  const tasks = new TaskService({
    store,
    fingerprint,
    hiddenSize: model.config.nEmbd,
    maxVirtualTokens: slots.maxVirtualTokens,
  });
  return {
    training,
    jobs,
    tasks,
    inference,
    scheduler,
    slots,
    role: opts.role ?? "both",
    async close() {
      await Promise.all([training.close(), scheduler.close()]);
      if (ownJobs !== opts.jobs) await jobs.close();
    },
  };
}
