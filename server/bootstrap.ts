/**
 * Builds the resident pieces every entry point needs (server, train and eval commands, bench):
 * the frozen model loaded once, its tokenizer (checked against the vocabulary), one engine, and
 * the task registry bound to the model's fingerprint.
 */
import { createEngine, type Engine, type LoadedModel, loadModel } from "./model/mod.ts";
import type { WeightMode } from "./model/int8.ts";
import { createWorkerEngine } from "./model/worker_engine.ts";
import { checkTokenizerMatchesModel, loadTokenizer, type Tokenizer } from "./model/tokenizer.ts";
import {
  DiskTaskStore,
  fingerprintOf,
  type ModelFingerprint,
  type TaskStore,
} from "./registry/mod.ts";
import { PgTaskStore } from "./registry/pg_store.ts";
import { Database } from "./util/db.ts";

export interface RuntimeOptions {
  /** Model directory in Hugging Face layout. Default: the shipped models/tiny-gpt2. */
  modelDir?: string;
  /** Registry directory. Default: .registry in the working directory. */
  registryDir?: string;
  /** PostgreSQL: the registry (and the job queue) in this database instead of on local disk. */
  databaseUrl?: string;
  /** fast (default), wasm, cpu or tensorflow. */
  backend?: string;
  threads?: number;
  /**
   * "stored" (default): the frozen matrices as the checkpoint stores them; "int8": quantised at
   * load with a scale per row (decoding reads a quarter of float32's bytes; see int8.ts).
   */
  weights?: WeightMode;
  /**
   * Run the engine in a worker thread so the event loop serving RPCs stays free while the model
   * works (the service does; the one-shot commands need not). Default false.
   */
  engineWorker?: boolean;
}

export interface Runtime {
  model: LoadedModel;
  tokenizer: Tokenizer;
  engine: Engine;
  store: TaskStore;
  fingerprint: ModelFingerprint;
  /** The shared database, when the PostgreSQL backend is in use. */
  db?: Database;
}

export const DEFAULT_MODEL_DIR = new URL("../models/tiny-gpt2", import.meta.url).pathname;

/**
 * Where dataset paths of training configs resolve by default: the project's own data/ (the
 * tutorial's splits), never the working directory, which also holds the registry, runs and keys.
 */
export const DEFAULT_DATA_DIR = new URL("../data", import.meta.url).pathname;

export async function openRuntime(opts: RuntimeOptions = {}): Promise<Runtime> {
  const modelDir = opts.modelDir ?? DEFAULT_MODEL_DIR;
  const model = await loadModel(modelDir, { weights: opts.weights });
  const tokenizer = await loadTokenizer(modelDir);
  checkTokenizerMatchesModel(tokenizer, model.config.vocabSize, modelDir);
  const engine = opts.engineWorker
    ? await createWorkerEngine(model, { backend: opts.backend, threads: opts.threads })
    : await createEngine(model, { backend: opts.backend, threads: opts.threads });
  const fingerprint = fingerprintOf(model);
  if (opts.databaseUrl) {
    const db = await Database.open(opts.databaseUrl);
    const store = await PgTaskStore.open(db, { fingerprint });
    return { model, tokenizer, engine, store, fingerprint, db };
  }
  const store = await DiskTaskStore.open(opts.registryDir ?? ".registry", { fingerprint });
  return { model, tokenizer, engine, store, fingerprint };
}
