/**
 * OpenTelemetry for the service, set up by `@opentelemetry/sdk-node` from the standard `OTEL_*`
 * variables: exporters (`OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`), protocol
 * (`OTEL_EXPORTER_OTLP_PROTOCOL`: grpc, http/protobuf or http/json), endpoints and headers
 * (`OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT`, `..._HEADERS`), `OTEL_SERVICE_NAME`,
 * `OTEL_RESOURCE_ATTRIBUTES`, the sampler (`OTEL_TRACES_SAMPLER`, `..._ARG`), propagators
 * (`OTEL_PROPAGATORS`, W3C trace context by default) and `OTEL_METRIC_EXPORT_INTERVAL`.
 *
 * The SDK exports to localhost when nothing is set; the service instead stays silent unless an
 * endpoint or an exporter variable is set, so a service without a collector logs no export
 * errors. `OTEL_SDK_DISABLED=true` turns everything off.
 *
 * What is recorded: a span per RPC (rpc.system, rpc.service, rpc.method, rpc.grpc.status_code),
 * continuing the caller's trace when its metadata carries `traceparent`; spans for training steps
 * (children of the Train call that started the job) and inference batches; the metrics of
 * `service_metrics.ts`.
 *
 * Metrics go to the OTLP exporter when the variables ask for it, and to `/metrics` in the
 * Prometheus format when METRICS_PORT is set (`metrics_endpoint.ts`): either, both or none.
 *
 * The SDK registers the global OpenTelemetry providers: one `Telemetry` per process.
 */
import {
  context,
  type Meter,
  metrics,
  propagation,
  SpanKind,
  SpanStatusCode,
  trace,
  type Tracer,
} from "@opentelemetry/api";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { status } from "@grpc/grpc-js";
import type { Interceptor, RpcResponse } from "../rpc/call.ts";
import { codeName, toStatus } from "../rpc/errors.ts";
import { createMetricsEndpoint, type MetricsEndpoint } from "./metrics_endpoint.ts";
import { type ObservedSources, ServiceMetrics } from "./service_metrics.ts";

/** Whether the standard variables ask for telemetry (see the module comment). */
export function telemetryWanted(env: (name: string) => string | undefined): boolean {
  if ((env("OTEL_SDK_DISABLED") ?? "").trim().toLowerCase() === "true") return false;
  const set = (n: string) => (env(n) ?? "").trim() !== "";
  const exporter = (n: string) => set(n) && env(n)!.trim().toLowerCase() !== "none";
  return set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") ||
    set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") || exporter("OTEL_TRACES_EXPORTER") ||
    exporter("OTEL_METRICS_EXPORTER");
}

export interface TrainingStepInfo {
  jobId: string;
  step: number;
  epoch: number;
  loss: number;
  tokensPerSecond: number;
  /** When the step began and ended (ms since the epoch); default: now, zero length. */
  startMs?: number;
  endMs?: number;
}

export interface InferenceBatchInfo {
  batchSize: number;
  prefillTokens: number;
  /** Prompt rows taken from the prefix cache. */
  prefixTokens: number;
  decodeTokens: number;
  /** Tokens generated in the step (one per sequence). */
  generated: number;
  queueDepth: number;
  tokensPerSecond: number;
  /** Milliseconds the engine step took. */
  durationMs: number;
}

export interface RequestLatencyInfo {
  finishReason: string;
  timeToFirstTokenMs: number;
  timePerOutputTokenMs?: number;
}

export interface Telemetry {
  /** Whether anything is recorded (the OTLP SDK runs, or `/metrics` is served). */
  readonly enabled: boolean;
  /** Span per RPC plus the latency histogram. Put it first (outermost) in the chain. */
  rpcInterceptor(): Interceptor;
  trainingStep(info: TrainingStepInfo): void;
  /** A job this replica ran reached its end (completed, failed, cancelled). */
  jobEnded(state: string): void;
  inferenceBatch(info: InferenceBatchInfo): void;
  /** A generation request finished: its time to first token and per-token latency. */
  requestFinished(info: RequestLatencyInfo): void;
  /** A store failed (its faults, not its answers: `util/store_faults.ts`). */
  storeFault(store: "jobs" | "registry", operation: string, kind: string): void;
  /**
   * Figures read at each collection: the inference queue, the prompt slots, the job queue
   * (`promptlearning_jobs_waiting`: jobs no runner holds, what a training fleet scales on; with a
   * shared database every replica reports the whole queue) and the model's memory.
   */
  observe(sources: ObservedSources): void;
  /** Starts `/metrics` when METRICS_PORT asks for it; its address, or undefined. */
  listen(): Promise<{ host: string; port: number } | undefined>;
  /** Sends what is buffered. */
  flush(): Promise<void>;
  shutdown(): Promise<void>;
}

export interface CreateTelemetryOptions {
  /** Reads the OTEL_* variables. Default: the process environment (which the SDK reads too). */
  env?: (name: string) => string | undefined;
  /** Serve `/metrics` here (METRICS_PORT; port 0: a free one). Default: no endpoint. */
  metrics?: { host: string; port: number };
}

/**
 * Starts the SDK when the environment asks for it and the `/metrics` endpoint when `metrics` is
 * given; with neither, every hook costs next to nothing.
 */
export function createTelemetry(opts: CreateTelemetryOptions = {}): Telemetry {
  const env = opts.env ?? ((n: string) => Deno.env.get(n));
  const sdk = telemetryWanted(env)
    ? new NodeSDK({ serviceName: env("OTEL_SERVICE_NAME") || "prompt-learning" })
    : undefined;
  sdk?.start();
  const tracer: Tracer | undefined = sdk ? trace.getTracer("promptlearning") : undefined;
  const endpoint: MetricsEndpoint | undefined = opts.metrics
    ? createMetricsEndpoint(opts.metrics)
    : undefined;
  const meters: Meter[] = [];
  if (sdk) meters.push(metrics.getMeter("promptlearning"));
  if (endpoint) meters.push(endpoint.meter);
  const m = meters.length ? new ServiceMetrics(meters) : undefined;

  return {
    enabled: m !== undefined,

    rpcInterceptor(): Interceptor {
      return (next) => async (req) => {
        if (!m) return next(req);
        const { service, method } = req.ctx;
        const started = performance.now();
        const attrs = { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method };
        let parent = context.active();
        let span: ReturnType<Tracer["startSpan"]> | undefined;
        if (tracer) {
          // W3C trace context (or whatever OTEL_PROPAGATORS names) from the call's metadata.
          parent = propagation.extract(parent, req.ctx.header, {
            get: (carrier, key) => carrier.get(key),
            keys: (carrier) => [...carrier.keys()],
          });
          span = tracer.startSpan(`${service}/${method}`, {
            kind: SpanKind.SERVER,
            attributes: { ...attrs, "network.peer.address": req.ctx.peer },
          }, parent);
        }
        const inSpan = span ? trace.setSpan(parent, span) : parent;
        let ended = false;
        const end = (err?: unknown) => {
          if (ended) return;
          ended = true;
          const code = err === undefined ? status.OK : toStatus(err, req.ctx.signal).code;
          m.rpcDuration.record((performance.now() - started) / 1000, {
            ...attrs,
            "rpc.grpc.status_code": code,
          });
          if (!span) return;
          span.setAttribute("rpc.grpc.status_code", code);
          if (code !== status.OK) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: codeName(code) });
          }
          span.end();
        };
        let res: RpcResponse;
        try {
          // Work started by the call (a training job) runs in the call's span.
          res = await context.with(inSpan, () => next(req));
        } catch (err) {
          end(err);
          throw err;
        }
        if (!res.stream) {
          end();
          return res;
        }
        const source = res.messages[Symbol.asyncIterator]();
        return {
          stream: true,
          messages: (async function* () {
            let count = 0;
            try {
              // A streaming handler runs as it is iterated: each step in the call's span.
              while (true) {
                const r = await context.with(inSpan, () => source.next());
                if (r.done) break;
                count++;
                yield r.value;
              }
              span?.setAttribute("rpc.messages_sent", count);
              end(req.ctx.signal.aborted ? req.ctx.signal.reason : undefined);
            } catch (err) {
              end(err);
              throw err;
            } finally {
              // The client went away early: let the handler clean up, and close the span.
              await source.return?.();
              end(req.ctx.signal.aborted ? req.ctx.signal.reason : undefined);
            }
          })(),
        };
      };
    },

    trainingStep(info) {
      m?.trainingStep.record(info.step);
      m?.trainingTokensPerSecond.record(info.tokensPerSecond);
      m?.trainingLoss.record(info.loss);
      if (!tracer) return;
      const now = Date.now();
      const span = tracer.startSpan("training.step", {
        startTime: info.startMs ?? now,
        attributes: {
          "job.id": info.jobId,
          "training.step": info.step,
          "training.epoch": info.epoch,
          "training.loss": info.loss,
          "training.tokens_per_second": info.tokensPerSecond,
        },
      });
      span.end(info.endMs ?? now);
    },

    jobEnded(state) {
      m?.jobsEnded.record(1, { state });
    },

    inferenceBatch(info) {
      if (m) {
        m.batchSize.record(info.batchSize);
        m.stepTokens.record(info.prefillTokens + info.decodeTokens);
        m.stepDuration.record(info.durationMs / 1000);
        m.promptTokens.record(info.prefillTokens);
        m.prefixTokens.record(info.prefixTokens);
        m.generatedTokens.record(info.generated);
      }
      if (!tracer) return;
      const now = Date.now();
      const span = tracer.startSpan("inference.batch", {
        startTime: now - info.durationMs,
        attributes: {
          "inference.batch_size": info.batchSize,
          "inference.queue_depth": info.queueDepth,
          "inference.prefill_tokens": info.prefillTokens,
          "inference.decode_tokens": info.decodeTokens,
          "inference.tokens_per_second": info.tokensPerSecond,
        },
      });
      span.end(now);
    },

    requestFinished(info) {
      if (!m) return;
      m.requests.record(1, { finish_reason: info.finishReason });
      m.timeToFirstToken.record(info.timeToFirstTokenMs / 1000);
      if (info.timePerOutputTokenMs !== undefined) {
        m.timePerOutputToken.record(info.timePerOutputTokenMs / 1000);
      }
    },

    storeFault(store, operation, kind) {
      (store === "jobs" ? m?.jobStoreErrors : m?.registryErrors)?.record(1, { operation, kind });
    },

    observe(sources) {
      m?.observe(sources);
    },

    async listen() {
      return await endpoint?.listen();
    },

    async flush() {
      // The SDK keeps its providers private; the global ones it registered are them (the
      // tracer provider behind the API's proxy).
      type Flushable = { forceFlush?: () => Promise<void>; getDelegate?: () => Flushable };
      const tp = trace.getTracerProvider() as Flushable;
      const mp = metrics.getMeterProvider() as Flushable;
      if (sdk) await Promise.all([(tp.getDelegate?.() ?? tp).forceFlush?.(), mp.forceFlush?.()]);
    },

    async shutdown() {
      await Promise.all([sdk?.shutdown(), endpoint?.close()]);
    },
  };
}
