/**
 * The service: loads the model once, opens the registry, wires training and serving, and serves
 * PromptLearning + health + reflection over gRPC. Owns signals: on SIGTERM/SIGINT health goes
 * NOT_SERVING, in-flight calls drain (SHUTDOWN_GRACE_MS), the running training job stops without
 * an outcome (journaled on disk it resumes from its checkpoint at the next start; with a database
 * another replica takes it over), then the process exits.
 */
import { openRuntime } from "./bootstrap.ts";
import { createGrpcServer } from "./rpc/server.ts";
import { runsJobs } from "./replica_role.ts";
import { createServices } from "./services.ts";
import { createTelemetry } from "./telemetry/mod.ts";
import { readSettings, SETTINGS_HELP } from "./settings.ts";
import { isTerminal } from "./training/events.ts";
import { weightBytes } from "./model/weights.ts";

async function main(): Promise<void> {
  if (Deno.args.includes("--help")) {
    console.log(
      `usage: deno task serve [flags]; each flag also reads the environment variable named\n${SETTINGS_HELP}`,
    );
    return;
  }
  const s = readSettings(Deno.args, (n) => Deno.env.get(n));
  const started = performance.now();
  const runtime = await openRuntime({
    modelDir: s.modelDir,
    registryDir: s.registryDir,
    databaseUrl: s.databaseUrl,
    backend: s.backend,
    weights: s.weights,
    threads: s.threads,
    engineWorker: s.engineWorker,
  });
  const telemetry = createTelemetry({
    metrics: s.metricsPort === undefined ? undefined : { host: s.host, port: s.metricsPort },
  });
  const services = await createServices(runtime, {
    onStep: (st) =>
      telemetry.inferenceBatch({
        batchSize: st.batchSize,
        queueDepth: st.queueDepth,
        prefillTokens: st.prefillTokens,
        prefixTokens: st.prefixTokens,
        decodeTokens: st.decodeTokens,
        // Scoring requests end in their prefill step without generating.
        generated: st.generated,
        tokensPerSecond: st.tokensPerSecond,
        durationMs: st.stepMs,
      }),
    onFinished: (r) => telemetry.requestFinished(r),
    onStoreFault: (store, operation, kind) => telemetry.storeFault(store, operation, kind),
    onTrainingEvent: (jobId, e) => {
      if (e.type === "step") {
        telemetry.trainingStep({
          jobId,
          step: e.step,
          epoch: e.epoch,
          loss: e.loss,
          tokensPerSecond: e.tokensPerSecond,
        });
      } else if (isTerminal(e)) {
        telemetry.jobEnded(e.type);
      }
    },
    dataDir: s.dataDir,
    runsDir: s.runsDir,
    maxQueuedJobs: s.maxQueuedJobs,
    durableJobs: true,
    jobLeaseMs: s.jobLeaseMs,
    maxSlots: s.promptSlots,
    prefixCacheMb: s.prefixCacheMb,
    trainingMinShare: s.trainingMinShare / 100,
    role: s.role,
    servingLimits: {
      maxBatchSize: s.maxBatchSize,
      maxQueueLength: s.maxQueueLength,
      maxNewTokens: s.maxNewTokens,
      maxTokensPerStep: s.maxTokensPerStep,
    },
  });
  telemetry.observe({
    inference: () => services.scheduler.stats(),
    slots: () => services.slots.stats(),
    jobs: () => services.jobs.counts(),
    modelBytes: weightBytes(runtime.model.weights),
  });
  const metricsAt = await telemetry.listen();
  const stale = await services.training.removeStaleJobDirs();
  if (stale.length) {
    console.log(
      JSON.stringify({ msg: "removed job directories of an earlier process", jobs: stale }),
    );
  }
  // Jobs an earlier process (or a replica that is gone) left unfinished resume from here; a
  // serving replica leaves them to the training ones.
  if (runsJobs(s.role)) services.training.start();
  const server = createGrpcServer(services, {
    host: s.host,
    port: s.port,
    tls: s.tls,
    authToken: s.authToken,
    authReads: s.authReads,
    maxReceiveMessageBytes: s.maxMessageBytes,
    maxSendMessageBytes: s.maxMessageBytes,
    shutdownGraceMs: s.shutdownGraceMs,
    http2: {
      maxConcurrentStreams: s.maxConcurrentStreams,
      maxConnectionIdleMs: s.maxConnectionIdleMs,
      keepaliveTimeMs: s.keepaliveTimeMs,
    },
    interceptors: [telemetry.rpcInterceptor()],
  });
  const addr = await server.start();
  console.log(JSON.stringify({
    msg: "serving",
    address: `${addr.host}:${addr.port}`,
    tls: Boolean(s.tls),
    metrics: metricsAt ? `http://${metricsAt.host}:${metricsAt.port}/metrics` : "off",
    auth: s.authToken ? (s.authReads ? "all calls" : "mutating calls") : "off",
    role: s.role,
    engine: runtime.engine.name,
    weights: s.weights,
    model: runtime.model.dir,
    registry: runtime.db ? "postgresql" : s.registryDir,
    startup_ms: Math.round(performance.now() - started),
  }));
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(JSON.stringify({ msg: "shutting down", signal, grace_ms: s.shutdownGraceMs }));
    // The last word: whatever hangs, the process is gone a little after the grace period.
    const hard = setTimeout(() => {
      console.error(JSON.stringify({ msg: "shutdown overran its grace period; exiting" }));
      Deno.exit(1);
    }, s.shutdownGraceMs + 2_000);
    await server.shutdown({ graceMs: s.shutdownGraceMs, drain: () => services.close() });
    await telemetry.shutdown();
    await runtime.db?.close();
    clearTimeout(hard);
    console.log(JSON.stringify({ msg: "stopped" }));
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`serve: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
