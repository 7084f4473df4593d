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
 * (children of the Train call that started the job) and inference batches; metrics for RPC
 * latency, queue depth, batch size, tokens/s and training loss.
 *
 * The SDK registers the global OpenTelemetry providers: one `Telemetry` per process.
 */
import {
  type Attributes,
  context,
  type Counter,
  type Gauge,
  type Histogram,
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
  queueDepth: number;
  prefillTokens: number;
  decodeTokens: number;
  tokensPerSecond: number;
  /** Milliseconds the engine step took. */
  durationMs: number;
}

export interface Telemetry {
  /** Whether the SDK runs (`telemetryWanted`). */
  readonly enabled: boolean;
  /** Span per RPC plus the latency histogram. Put it first (outermost) in the chain. */
  rpcInterceptor(): Interceptor;
  trainingStep(info: TrainingStepInfo): void;
  inferenceBatch(info: InferenceBatchInfo): void;
  /** Requests waiting for inference (recorded as a gauge). */
  queueDepth(depth: number, attributes?: Attributes): void;
  /**
   * Exports the job queue as gauges read at each collection: `promptlearning.jobs.waiting` (jobs
   * no runner holds: what a training fleet scales on) and `promptlearning.jobs.running`. With a
   * shared database every replica reports the whole queue.
   */
  observeJobs(counts: () => Promise<{ waiting: number; running: number }>): void;
  /** Sends what is buffered. */
  flush(): Promise<void>;
  shutdown(): Promise<void>;
}

interface Instruments {
  rpcDuration: Histogram;
  rpcCalls: Counter;
  queueDepth: Gauge;
  batchSize: Histogram;
  tokensPerSecond: Gauge;
  trainingTokensPerSecond: Gauge;
  trainingLoss: Gauge;
}

function instruments(meter: Meter): Instruments {
  return {
    rpcDuration: meter.createHistogram("rpc.server.duration", {
      unit: "ms",
      description: "Duration of inbound RPCs (streams: until their last message)",
    }),
    rpcCalls: meter.createCounter("rpc.server.calls", { description: "RPCs by method and code" }),
    queueDepth: meter.createGauge("promptlearning.inference.queue_depth", {
      description: "Inference requests waiting to be scheduled",
    }),
    batchSize: meter.createHistogram("promptlearning.inference.batch_size", {
      description: "Sequences in one engine step",
    }),
    tokensPerSecond: meter.createGauge("promptlearning.inference.tokens_per_second", {
      unit: "{token}/s",
    }),
    trainingTokensPerSecond: meter.createGauge("promptlearning.training.tokens_per_second", {
      unit: "{token}/s",
    }),
    trainingLoss: meter.createGauge("promptlearning.training.loss"),
  };
}

export interface CreateTelemetryOptions {
  /** Reads the OTEL_* variables. Default: the process environment (which the SDK reads too). */
  env?: (name: string) => string | undefined;
}

/** Starts the SDK when the environment asks for it; otherwise every hook costs next to nothing. */
export function createTelemetry(opts: CreateTelemetryOptions = {}): Telemetry {
  const env = opts.env ?? ((n: string) => Deno.env.get(n));
  const sdk = telemetryWanted(env)
    ? new NodeSDK({ serviceName: env("OTEL_SERVICE_NAME") || "prompt-learning" })
    : undefined;
  sdk?.start();
  const tracer: Tracer | undefined = sdk ? trace.getTracer("promptlearning") : undefined;
  const m = sdk ? instruments(metrics.getMeter("promptlearning")) : undefined;

  return {
    enabled: sdk !== undefined,

    rpcInterceptor(): Interceptor {
      return (next) => async (req) => {
        if (!tracer || !m) return next(req);
        const { service, method } = req.ctx;
        const started = performance.now();
        // W3C trace context (or whatever OTEL_PROPAGATORS names) from the call's metadata.
        const parent = propagation.extract(context.active(), req.ctx.header, {
          get: (carrier, key) => carrier.get(key),
          keys: (carrier) => [...carrier.keys()],
        });
        const span = tracer.startSpan(`${service}/${method}`, {
          kind: SpanKind.SERVER,
          attributes: {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "network.peer.address": req.ctx.peer,
          },
        }, parent);
        const inSpan = trace.setSpan(parent, span);
        let ended = false;
        const end = (err?: unknown) => {
          if (ended) return;
          ended = true;
          const code = err === undefined ? status.OK : toStatus(err, req.ctx.signal).code;
          const attrs = { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method };
          m.rpcDuration.record(performance.now() - started, {
            ...attrs,
            "rpc.grpc.status_code": code,
          });
          m.rpcCalls.add(1, { ...attrs, "rpc.grpc.status_code": code });
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
              span.setAttribute("rpc.messages_sent", count);
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
      m?.trainingTokensPerSecond.record(info.tokensPerSecond, { "job.id": info.jobId });
      m?.trainingLoss.record(info.loss, { "job.id": info.jobId });
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

    inferenceBatch(info) {
      m?.batchSize.record(info.batchSize);
      m?.queueDepth.record(info.queueDepth);
      m?.tokensPerSecond.record(info.tokensPerSecond);
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

    queueDepth(depth, attributes) {
      m?.queueDepth.record(depth, attributes);
    },

    observeJobs(counts) {
      if (!sdk) return;
      const meter = metrics.getMeter("promptlearning");
      const waiting = meter.createObservableGauge("promptlearning.jobs.waiting", {
        description: "Jobs queued or orphaned (lease run out), waiting for a runner",
      });
      const running = meter.createObservableGauge("promptlearning.jobs.running", {
        description: "Jobs a runner holds",
      });
      meter.addBatchObservableCallback(async (result) => {
        try {
          const c = await counts();
          result.observe(waiting, c.waiting);
          result.observe(running, c.running);
        } catch {
          // The store is away (a database restart): this collection has no figure.
        }
      }, [waiting, running]);
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
      await sdk?.shutdown();
    },
  };
}
