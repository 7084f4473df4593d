/**
 * Service settings from flags (`--port 50051`) or environment (`PORT=50051`); flags win.
 * Every setting has a documented default, and a bad value fails at start naming the setting.
 */
import { DEFAULT_DATA_DIR } from "./bootstrap.ts";
import { parseArgs } from "./cli/args.ts";
import { parseReplicaRole, type ReplicaRole } from "./replica_role.ts";
import { parseWeightMode, type WeightMode } from "./model/int8.ts";
import { DEFAULT_PROMPT_SLOTS } from "./serving/prompt_slots.ts";
import { DEFAULT_MAX_QUEUED_JOBS } from "./training/training_service.ts";

export interface Settings {
  /** HOST, --host. Default 127.0.0.1 (the container image sets 0.0.0.0). */
  host: string;
  /** PORT, --port. Default 50051. */
  port: number;
  /**
   * METRICS_PORT, --metrics-port: serves Prometheus metrics at http://HOST:METRICS_PORT/metrics
   * (0: a free port, named in the serving log line). Default: unset, no endpoint.
   */
  metricsPort?: number;
  /** MODEL_DIR, --model-dir. Default: the shipped models/tiny-gpt2. */
  modelDir?: string;
  /** REGISTRY_DIR, --registry-dir. Default .registry. */
  registryDir: string;
  /** RUNS_DIR, --runs-dir: training checkpoints. Default runs. */
  runsDir: string;
  /**
   * DATA_DIR, --data-dir: where dataset paths of Train requests resolve; they must stay inside it.
   * Default: the project's data/ directory (never the working directory).
   */
  dataDir: string;
  /**
   * BACKEND, --backend: auto | fast | onednn | cuda | wasm | cpu | tensorflow. Default auto:
   * onednn where its shim is built and loads, else fast.
   */
  backend: string;
  /**
   * WEIGHTS, --weights: stored | int8. How the frozen matrices are kept: as the checkpoint stores
   * them (float32, or f16/bf16 at half the memory), or int8 with a float32 scale per row,
   * quantised at load (a quarter of float32's bytes: faster decoding, slightly different
   * numbers; the README gives the measured difference). Default stored.
   */
  weights: WeightMode;
  /** THREADS, --threads: BLAS / wasm threads. Default: the library's own. */
  threads?: number;
  /**
   * ENGINE_WORKER, --engine-worker: the model computes in a worker thread, so health checks and
   * streams are answered while it works. Default true; false runs it on the event loop.
   */
  engineWorker: boolean;
  /**
   * AUTH_TOKEN, or the contents of AUTH_TOKEN_FILE / --auth-token-file. Off when unset. Surrounding
   * whitespace (a trailing newline from `echo` or a Secret file) is trimmed and said in the log;
   * a token with whitespace or control characters inside is refused at start.
   */
  authToken?: string;
  /** AUTH_READS, --auth-reads: reads (Infer, GetJob, WatchJob, List*) need the token too. Default false. */
  authReads: boolean;
  /** TLS_CERT + TLS_KEY (PEM files), --tls-cert/--tls-key. Plaintext when unset. */
  tls?: { cert: string; key: string };
  /** MAX_BATCH_SIZE: sequences per engine step. Default 32. */
  maxBatchSize: number;
  /** MAX_QUEUE_LENGTH: waiting inference requests before RESOURCE_EXHAUSTED. Default 256. */
  maxQueueLength: number;
  /** MAX_NEW_TOKENS: most tokens one request may ask for. Default 256. */
  maxNewTokens: number;
  /** MAX_TOKENS_PER_STEP: rows per engine call. Default 2048. */
  maxTokensPerStep: number;
  /**
   * PREFIX_CACHE_MB: memory for task versions' shared prompt prefixes (their KV rows, computed once
   * and forked for each request). Default 64; 0 turns the cache off.
   */
  prefixCacheMb: number;
  /**
   * TRAINING_MIN_SHARE: the percent of engine time training keeps while requests are served;
   * above it, a training step waits for inference. Default 10.
   */
  trainingMinShare: number;
  /** MAX_QUEUED_JOBS: training jobs queued or running. Default DEFAULT_MAX_QUEUED_JOBS (16). */
  maxQueuedJobs: number;
  /** MAX_MESSAGE_BYTES: gRPC message size limit both ways. Default 64 MiB. */
  maxMessageBytes: number;
  /** PROMPT_SLOTS: prompt tables resident at once. Default DEFAULT_PROMPT_SLOTS (64). */
  promptSlots: number;
  /** SHUTDOWN_GRACE_MS: time in-flight calls get at shutdown. Default 10000. */
  shutdownGraceMs: number;
  /** MAX_CONCURRENT_STREAMS: calls open at once per connection. Default 100. */
  maxConcurrentStreams: number;
  /** MAX_CONNECTION_IDLE_MS: a connection without calls this long is closed. Default 300000. */
  maxConnectionIdleMs: number;
  /** KEEPALIVE_TIME_MS: the server pings each connection this often. Default 60000. */
  keepaliveTimeMs: number;
  /**
   * DATABASE_URL, --database-url: postgres://user:password@host:port/db. When set, the registry,
   * the job queue, job events and checkpoints live in that PostgreSQL database, shared by every
   * replica on it (REGISTRY_DIR is then unused). Default: unset, the embedded backend (registry on
   * local disk, in-process queue).
   */
  databaseUrl?: string;
  /**
   * REPLICA_ROLE: serve (inference only, never claims a job; needs DATABASE_URL, where other
   * replicas run the jobs it queues), train (jobs only; inference is refused and its health
   * "inference" is NOT_SERVING), or both. Default both.
   */
  role: ReplicaRole;
  /**
   * JOB_LEASE_MS, --job-lease-ms: how long a replica's claim on a running job lasts without a
   * heartbeat; a replica that dies loses its job to another this long after. Default 15000.
   */
  jobLeaseMs: number;
}

const FLAGS: Record<string, string> = {
  host: "HOST",
  port: "PORT",
  "metrics-port": "METRICS_PORT",
  "model-dir": "MODEL_DIR",
  "registry-dir": "REGISTRY_DIR",
  "runs-dir": "RUNS_DIR",
  "data-dir": "DATA_DIR",
  backend: "BACKEND",
  weights: "WEIGHTS",
  role: "REPLICA_ROLE",
  threads: "THREADS",
  "engine-worker": "ENGINE_WORKER",
  "auth-token-file": "AUTH_TOKEN_FILE",
  "auth-reads": "AUTH_READS",
  "tls-cert": "TLS_CERT",
  "tls-key": "TLS_KEY",
  "max-batch-size": "MAX_BATCH_SIZE",
  "max-queue-length": "MAX_QUEUE_LENGTH",
  "max-new-tokens": "MAX_NEW_TOKENS",
  "max-tokens-per-step": "MAX_TOKENS_PER_STEP",
  "prefix-cache-mb": "PREFIX_CACHE_MB",
  "training-min-share": "TRAINING_MIN_SHARE",
  "max-queued-jobs": "MAX_QUEUED_JOBS",
  "max-message-bytes": "MAX_MESSAGE_BYTES",
  "prompt-slots": "PROMPT_SLOTS",
  "shutdown-grace-ms": "SHUTDOWN_GRACE_MS",
  "max-concurrent-streams": "MAX_CONCURRENT_STREAMS",
  "max-connection-idle-ms": "MAX_CONNECTION_IDLE_MS",
  "keepalive-time-ms": "KEEPALIVE_TIME_MS",
  "database-url": "DATABASE_URL",
  "job-lease-ms": "JOB_LEASE_MS",
};

export const SETTINGS_HELP = Object.entries(FLAGS).map(([f, e]) => `  --${f} (${e})`).join("\n");

/**
 * The token as it will be compared: trimmed (a trailing newline would never match what clients
 * send, refusing every call), and refused when empty or when whitespace or control characters
 * remain inside it.
 */
function checkToken(raw: string, source: string, warn: (msg: string) => void): string {
  const token = raw.trim();
  if (token === "") throw new RangeError(`${source} is empty`);
  // deno-lint-ignore no-control-regex -- control characters are exactly what is refused
  if (/[\s\x00-\x1f\x7f]/.test(token)) {
    throw new RangeError(`${source} must not contain whitespace or control characters inside it`);
  }
  if (token !== raw) warn(`${source}: surrounding whitespace was trimmed from the token`);
  return token;
}

export function readSettings(
  argv: string[],
  env: (name: string) => string | undefined,
  warn: (msg: string) => void = (msg) =>
    console.warn(JSON.stringify({ msg: "settings", warning: msg })),
): Settings {
  const args = parseArgs(argv, Object.keys(FLAGS));
  const raw = (flag: string): string | undefined => {
    const v = args.flags.get(flag);
    return typeof v === "string" ? v : env(FLAGS[flag]);
  };
  const int = (flag: string, dflt: number, min = 1, max = Number.MAX_SAFE_INTEGER): number => {
    const v = raw(flag);
    if (v === undefined || v === "") return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new RangeError(
        `--${flag} (${FLAGS[flag]}) must be an integer in [${min}, ${max}]: found ${
          JSON.stringify(v)
        }`,
      );
    }
    return n;
  };
  const bool = (flag: string, dflt: boolean): boolean => {
    const v = (raw(flag) ?? "").trim().toLowerCase();
    if (v === "") return dflt;
    if (v === "true" || v === "1") return true;
    if (v === "false" || v === "0") return false;
    throw new RangeError(
      `--${flag} (${FLAGS[flag]}) must be true or false: found ${JSON.stringify(v)}`,
    );
  };
  const tokenFile = raw("auth-token-file");
  let authToken = env("AUTH_TOKEN") || undefined;
  let tokenSource = "AUTH_TOKEN";
  if (tokenFile) {
    try {
      authToken = Deno.readTextFileSync(tokenFile);
    } catch (e) {
      throw new Error(`--auth-token-file (AUTH_TOKEN_FILE) ${tokenFile}: ${(e as Error).message}`);
    }
    tokenSource = `--auth-token-file (AUTH_TOKEN_FILE) ${tokenFile}`;
  }
  if (authToken !== undefined) authToken = checkToken(authToken, tokenSource, warn);
  const authReadsRaw = (raw("auth-reads") ?? "").trim().toLowerCase();
  if (!["", "true", "false", "1", "0"].includes(authReadsRaw)) {
    throw new RangeError(
      `--auth-reads (AUTH_READS) must be true or false: found ${JSON.stringify(authReadsRaw)}`,
    );
  }
  const authReads = authReadsRaw === "true" || authReadsRaw === "1";
  if (authReads && !authToken) {
    throw new RangeError("--auth-reads (AUTH_READS) needs a token (AUTH_TOKEN or AUTH_TOKEN_FILE)");
  }
  const cert = raw("tls-cert"), key = raw("tls-key");
  if (Boolean(cert) !== Boolean(key)) {
    throw new RangeError("TLS needs both --tls-cert (TLS_CERT) and --tls-key (TLS_KEY)");
  }
  const threadsRaw = raw("threads");
  const databaseUrl = raw("database-url") || undefined;
  if (databaseUrl !== undefined) checkDatabaseUrl(databaseUrl);
  const role = parseReplicaRole(raw("role") || "both", "--role (REPLICA_ROLE)");
  if (role === "serve" && databaseUrl === undefined) {
    throw new RangeError(
      "--role (REPLICA_ROLE) serve needs DATABASE_URL: with the embedded job queue no other replica would run the jobs it accepts",
    );
  }
  return {
    host: raw("host") || "127.0.0.1",
    port: int("port", 50051, 0, 65535),
    metricsPort: raw("metrics-port") ? int("metrics-port", 0, 0, 65535) : undefined,
    modelDir: raw("model-dir") || undefined,
    registryDir: raw("registry-dir") || ".registry",
    runsDir: raw("runs-dir") || "runs",
    dataDir: raw("data-dir") || DEFAULT_DATA_DIR,
    backend: raw("backend") || "auto",
    weights: parseWeightMode(raw("weights") || "stored", "--weights (WEIGHTS)"),
    threads: threadsRaw ? int("threads", 1) : undefined,
    engineWorker: bool("engine-worker", true),
    authToken,
    authReads,
    tls: cert && key
      ? { cert: Deno.readTextFileSync(cert), key: Deno.readTextFileSync(key) }
      : undefined,
    maxBatchSize: int("max-batch-size", 32),
    maxQueueLength: int("max-queue-length", 256),
    maxNewTokens: int("max-new-tokens", 256),
    maxTokensPerStep: int("max-tokens-per-step", 2048),
    prefixCacheMb: int("prefix-cache-mb", 64, 0),
    trainingMinShare: int("training-min-share", 10, 0, 100),
    maxQueuedJobs: int("max-queued-jobs", DEFAULT_MAX_QUEUED_JOBS),
    maxMessageBytes: int("max-message-bytes", 64 << 20),
    promptSlots: int("prompt-slots", DEFAULT_PROMPT_SLOTS),
    shutdownGraceMs: int("shutdown-grace-ms", 10_000, 0),
    maxConcurrentStreams: int("max-concurrent-streams", 100),
    maxConnectionIdleMs: int("max-connection-idle-ms", 300_000, 1000),
    keepaliveTimeMs: int("keepalive-time-ms", 60_000, 1000),
    databaseUrl,
    role,
    jobLeaseMs: int("job-lease-ms", 15_000, 1000, 3_600_000),
  };
}

/** A PostgreSQL URL, refused at start otherwise (its password is never echoed). */
function checkDatabaseUrl(url: string): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RangeError(
      "--database-url (DATABASE_URL) must be a URL like postgres://user:password@host:5432/db",
    );
  }
  if (u.protocol !== "postgres:" && u.protocol !== "postgresql:") {
    throw new RangeError(
      `--database-url (DATABASE_URL) must start with postgres:// or postgresql://: found ${u.protocol}//`,
    );
  }
  if (!u.hostname) throw new RangeError("--database-url (DATABASE_URL) must name a host");
}
