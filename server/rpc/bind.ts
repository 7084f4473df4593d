/**
 * Binds `ServiceImpl` handlers to grpc-js: builds each call's context (deadline and cancellation
 * as an AbortSignal), runs the interceptors, writes streams with backpressure, and turns errors
 * into statuses through `toStatus()`.
 */
import type * as grpc from "@grpc/grpc-js";
import { applyInterceptors, type CallContext, type Interceptor, type Next } from "./call.ts";
import { ServiceError } from "../errors.ts";
import { toStatus } from "./errors.ts";

type AnyHandler = (req: unknown, ctx: CallContext) => Promise<unknown> | AsyncIterable<unknown>;

export interface InflightTracker {
  begin(): void;
  end(): void;
}

export interface BindOptions {
  /** "promptlearning.v1.PromptLearning" */
  serviceName: string;
  interceptors?: readonly Interceptor[];
  /** Aborts every call's signal (the server is going away). */
  serverSignal?: AbortSignal;
  /** Once aborted, new calls are refused with UNAVAILABLE (the server is draining). */
  refuseSignal?: AbortSignal;
  inflight?: InflightTracker;
}

interface CallLike {
  metadata: grpc.Metadata;
  getDeadline(): grpc.Deadline;
  getPeer(): string;
  on(event: "cancelled", listener: () => void): unknown;
}

function makeContext(
  call: CallLike,
  service: string,
  method: string,
  serverSignal: AbortSignal | undefined,
): { ctx: CallContext; dispose: () => void } {
  const ac = new AbortController();
  const raw = call.getDeadline();
  const ms = raw instanceof Date ? raw.getTime() : raw;
  const deadline = Number.isFinite(ms) ? new Date(ms) : undefined;
  let finished = false;
  const deadlinePassed = () => deadline !== undefined && Date.now() >= deadline.getTime();
  const timeout = () => ac.abort(new DOMException("deadline exceeded", "TimeoutError"));
  if (deadlinePassed()) timeout();
  // grpc-js keeps the deadline itself: when it passes, it sends DEADLINE_EXCEEDED and the call
  // is cancelled, so no timer of ours is needed. It also reports every call as cancelled once
  // its status is sent; a call that already finished is not aborted (nobody listens any more,
  // and building the abort reason cost a tenth of a millisecond on the response's path).
  call.on("cancelled", () => {
    if (finished || ac.signal.aborted) return;
    if (deadlinePassed()) timeout();
    else ac.abort(new DOMException("the client cancelled the call", "AbortError"));
  });
  const onServerAbort = () =>
    ac.abort(new DOMException("the server is shutting down", "AbortError"));
  if (serverSignal?.aborted) onServerAbort();
  serverSignal?.addEventListener("abort", onServerAbort, { once: true });
  let header: Map<string, string> | undefined;
  const ctx: CallContext = {
    service,
    method,
    signal: ac.signal,
    deadline,
    // Read on first use: most calls never look at their metadata or peer.
    get header() {
      if (!header) {
        header = new Map();
        for (const [k, v] of Object.entries(call.metadata.getMap())) {
          if (typeof v === "string") header.set(k.toLowerCase(), v);
        }
      }
      return header;
    },
    get peer() {
      return call.getPeer();
    },
  };
  return {
    ctx,
    dispose: () => {
      finished = true;
      serverSignal?.removeEventListener("abort", onServerAbort);
    },
  };
}

function toServiceError(err: unknown, signal: AbortSignal): Partial<grpc.StatusObject> {
  const s = toStatus(err, signal);
  return { code: s.code, details: s.details };
}

/** A grpc-js implementation object for `definition` backed by `impl`. */
export function bindService(
  definition: grpc.ServiceDefinition,
  impl: object,
  opts: BindOptions,
): grpc.UntypedServiceImplementation {
  const out: grpc.UntypedServiceImplementation = {};
  for (const [method, def] of Object.entries(definition)) {
    const handler = (impl as Record<string, AnyHandler | undefined>)[method];
    if (typeof handler !== "function") {
      throw new TypeError(`bindService: no handler for ${opts.serviceName}/${method}`);
    }
    if (def.requestStream) {
      throw new TypeError(`bindService: client streaming is not supported (${method})`);
    }
    const core: Next = (req) => {
      if (opts.refuseSignal?.aborted) {
        return Promise.reject(
          new ServiceError("unavailable", "the server is shutting down: retry on another replica"),
        );
      }
      if (req.stream) {
        return Promise.resolve({
          stream: true,
          messages: handler(req.message, req.ctx) as AsyncIterable<unknown>,
        });
      }
      return (handler(req.message, req.ctx) as Promise<unknown>).then((message) => ({
        stream: false,
        message,
      }));
    };
    const run = applyInterceptors(core, opts.interceptors ?? []);

    if (!def.responseStream) {
      const unary: grpc.handleUnaryCall<unknown, unknown> = (call, callback) => {
        const { ctx, dispose } = makeContext(call, opts.serviceName, method, opts.serverSignal);
        opts.inflight?.begin();
        run({ stream: false, message: call.request, ctx })
          .then((res) => {
            if (res.stream) throw new TypeError(`${method} returned a stream for a unary call`);
            callback(null, res.message);
          })
          .catch((err) => callback(toServiceError(err, ctx.signal)))
          .finally(() => {
            dispose();
            opts.inflight?.end();
          });
      };
      out[method] = unary;
    } else {
      const streaming: grpc.handleServerStreamingCall<unknown, unknown> = (call) => {
        const { ctx, dispose } = makeContext(call, opts.serviceName, method, opts.serverSignal);
        opts.inflight?.begin();
        (async () => {
          try {
            const res = await run({ stream: true, message: call.request, ctx });
            if (!res.stream) throw new TypeError(`${method} returned one message for a stream`);
            for await (const message of res.messages) {
              if (ctx.signal.aborted) break;
              if (!call.write(message)) await drained(call, ctx.signal);
            }
            if (ctx.signal.aborted && !call.cancelled) {
              call.emit("error", toServiceError(ctx.signal.reason, ctx.signal));
            } else if (!call.cancelled) {
              call.end();
            }
          } catch (err) {
            if (!call.cancelled) call.emit("error", toServiceError(err, ctx.signal));
          } finally {
            dispose();
            opts.inflight?.end();
          }
        })();
      };
      out[method] = streaming;
    }
  }
  return out;
}

function drained(call: grpc.ServerWritableStream<unknown, unknown>, signal: AbortSignal) {
  return new Promise<void>((resolve) => {
    const done = () => {
      call.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.once("drain", done);
    signal.addEventListener("abort", done, { once: true });
  });
}
