/**
 * OpenTelemetry for the service: a span per RPC (rpc.system, rpc.service, rpc.method,
 * rpc.grpc.status_code), spans for training steps and inference batches, and metrics (queue
 * depth, batch size, tokens/s, RPC latency). Exported over OTLP/HTTP (JSON) when the standard
 * variables say so, off otherwise:
 *
 * - `OTEL_SDK_DISABLED=true`: everything off.
 * - `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`: "otlp" on, "none" off; unset: on when an
 *   endpoint is set.
 * - `OTEL_EXPORTER_OTLP_ENDPOINT` (base, `/v1/traces` and `/v1/metrics` appended) or the
 *   per-signal `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`.
 * - `OTEL_SERVICE_NAME` (default "prompt-learning"), `OTEL_METRIC_EXPORT_INTERVAL` (ms, 60000).
 *
 * Nothing is registered globally: each `Telemetry` owns its providers.
 */
import {
  type Attributes,
  type Counter,
  type Gauge,
  type Histogram,
  type Meter,
  SpanKind,
  SpanStatusCode,
  type Tracer,
} from "@opentelemetry/api";
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { MeterProvider, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  type SpanExporter,
} from "@opentelemetry/sdk-trace-base";
import { status } from "@grpc/grpc-js";
import type { Interceptor, RpcResponse } from "../rpc/call.ts";
import { codeName, toStatus } from "../rpc/errors.ts";

export interface TelemetryConfig {
  tracesEndpoint?: string;
  metricsEndpoint?: string;
  serviceName: string;
  metricIntervalMs: number;
}

/** Reads the standard OTEL_* variables; undefined endpoints mean that signal is off. */
export function telemetryConfigFromEnv(env: (name: string) => string | undefined): TelemetryConfig {
  const serviceName = env("OTEL_SERVICE_NAME") || "prompt-learning";
  const intervalRaw = env("OTEL_METRIC_EXPORT_INTERVAL");
  const metricIntervalMs = intervalRaw ? Number(intervalRaw) : 60_000;
  if (!Number.isFinite(metricIntervalMs) || metricIntervalMs <= 0) {
    throw new RangeError(
      `OTEL_METRIC_EXPORT_INTERVAL must be a positive number: found ${intervalRaw}`,
    );
  }
  if ((env("OTEL_SDK_DISABLED") ?? "").trim().toLowerCase() === "true") {
    return { serviceName, metricIntervalMs };
  }
  const base = env("OTEL_EXPORTER_OTLP_ENDPOINT")?.replace(/\/+$/, "");
  const pick = (exporterVar: string, specific: string, path: string): string | undefined => {
    const exporter = (env(exporterVar) ?? "").trim().toLowerCase();
    if (exporter === "none") return undefined;
    if (exporter !== "" && exporter !== "otlp") {
      throw new RangeError(
        `${exporterVar} must be "otlp" or "none": found ${JSON.stringify(exporter)}`,
      );
    }
    const url = env(specific) || (base ? `${base}${path}` : undefined);
    if (exporter === "otlp" && !url) return `http://localhost:4318${path}`;
    return url;
  };
  return {
    serviceName,
    metricIntervalMs,
    tracesEndpoint: pick(
      "OTEL_TRACES_EXPORTER",
      "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
      "/v1/traces",
    ),
    metricsEndpoint: pick(
      "OTEL_METRICS_EXPORTER",
      "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
      "/v1/metrics",
    ),
  };
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
  readonly tracesEnabled: boolean;
  readonly metricsEnabled: boolean;
  /** Span per RPC plus the latency histogram. Put it first (outermost) in the chain. */
  rpcInterceptor(): Interceptor;
  trainingStep(info: TrainingStepInfo): void;
  inferenceBatch(info: InferenceBatchInfo): void;
  /** Requests waiting for inference (recorded as a gauge). */
  queueDepth(depth: number, attributes?: Attributes): void;
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
  /** For tests: a span exporter instead of OTLP (traces on). */
  spanExporter?: SpanExporter;
}

/** Builds telemetry from a config (`telemetryConfigFromEnv`). Off signals cost next to nothing. */
export function createTelemetry(
  config: TelemetryConfig,
  opts: CreateTelemetryOptions = {},
): Telemetry {
  const resource = resourceFromAttributes({ "service.name": config.serviceName });
  const spanExporter = opts.spanExporter ??
    (config.tracesEndpoint ? new OTLPTraceExporter({ url: config.tracesEndpoint }) : undefined);
  const tracerProvider = spanExporter
    ? new BasicTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(spanExporter)] })
    : undefined;
  const meterProvider = config.metricsEndpoint
    ? new MeterProvider({
      resource,
      readers: [
        new PeriodicExportingMetricReader({
          exporter: new OTLPMetricExporter({ url: config.metricsEndpoint }),
          exportIntervalMillis: config.metricIntervalMs,
        }),
      ],
    })
    : undefined;
  const tracer: Tracer | undefined = tracerProvider?.getTracer("promptlearning.rpc");
  const m = meterProvider ? instruments(meterProvider.getMeter("promptlearning")) : undefined;

  return {
    tracesEnabled: tracer !== undefined,
    metricsEnabled: m !== undefined,

    rpcInterceptor(): Interceptor {
      return (next) => async (req) => {
        if (!tracer && !m) return next(req);
        const { service, method } = req.ctx;
        const started = performance.now();
        const span = tracer?.startSpan(`${service}/${method}`, {
          kind: SpanKind.SERVER,
          attributes: {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "network.peer.address": req.ctx.peer,
          },
        });
        const end = (err?: unknown) => {
          const code = err === undefined ? status.OK : toStatus(err, req.ctx.signal).code;
          const attrs = { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method };
          m?.rpcDuration.record(performance.now() - started, {
            ...attrs,
            "rpc.grpc.status_code": code,
          });
          m?.rpcCalls.add(1, { ...attrs, "rpc.grpc.status_code": code });
          if (span) {
            span.setAttribute("rpc.grpc.status_code", code);
            if (code !== status.OK) {
              span.setStatus({
                code: SpanStatusCode.ERROR,
                message: `${codeName(code)}: ${err instanceof Error ? err.message : String(err)}`,
              });
            }
            span.end();
          }
        };
        let res: RpcResponse;
        try {
          res = await next(req);
        } catch (err) {
          end(err);
          throw err;
        }
        if (!res.stream) {
          end();
          return res;
        }
        const source = res.messages;
        return {
          stream: true,
          messages: (async function* () {
            let count = 0;
            try {
              for await (const msg of source) {
                count++;
                yield msg;
              }
              span?.setAttribute("rpc.messages_sent", count);
              end(req.ctx.signal.aborted ? req.ctx.signal.reason : undefined);
            } catch (err) {
              end(err);
              throw err;
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

    async flush() {
      await Promise.all([tracerProvider?.forceFlush(), meterProvider?.forceFlush()]);
    },

    async shutdown() {
      await Promise.all([tracerProvider?.shutdown(), meterProvider?.shutdown()]);
    },
  };
}
