/**
 * `createGrpcServer(services, opts)`: the PromptLearning service, the standard health service and
 * server reflection (v1 and v1alpha) on one grpc-js server, behind `GrpcListener` (TCP or TLS,
 * client GOAWAY frames filtered: see `goaway_filter.ts`).
 *
 * Shutdown follows grpc-node's pattern: health goes NOT_SERVING first, the listener stops
 * accepting, in-flight calls get `graceMs` to finish (`tryShutdown`), then whatever is left is
 * cancelled (`forceShutdown`, connections dropped).
 */
import * as grpc from "@grpc/grpc-js";
import { ReflectionService } from "@grpc/reflection";
import { ALL_METHODS, bearerAuth } from "./auth.ts";
import { bindService, type InflightTracker } from "./bind.ts";
import type { Interceptor } from "./call.ts";
import { createHandlers, type Services } from "./handlers.ts";
import { INFERENCE_HEALTH_NAME, ServingHealth, TRAINING_HEALTH_NAME } from "./health.ts";
import { runsJobs, servesInference } from "../replica_role.ts";
import { GrpcListener, type ListenerStats } from "./listener.ts";
import { HEALTH_SERVICE_NAME, loadProto, SERVICE_NAME } from "../../proto/mod.ts";

export interface GrpcServerOptions {
  /** Default "127.0.0.1". */
  host?: string;
  /** Default 50051; 0 picks a free port. */
  port?: number;
  /** PEM certificate chain and key: TLS when given. */
  tls?: { cert: string; key: string };
  /** When set, Train, CancelJob, RegisterTask and DeleteTask need `Bearer <token>`. */
  authToken?: string;
  /** With `authToken`: every PromptLearning call needs it, reads included (health stays open). */
  authReads?: boolean;
  /** Largest request message in bytes. Default 64 MiB (PEFT adapters, prompt tables). */
  maxReceiveMessageBytes?: number;
  /** Largest response message in bytes. Default 64 MiB. */
  maxSendMessageBytes?: number;
  /** Interceptors run before auth, outermost first (telemetry goes here). */
  interceptors?: Interceptor[];
  /** Time in-flight calls get to finish at shutdown. Default 10 s. */
  shutdownGraceMs?: number;
  /** Filter client GOAWAY frames (the Deno crash workaround). Default true; false only to test. */
  filterGoaway?: boolean;
  /** Serve grpc.reflection.v1 and v1alpha. Default true. */
  reflection?: boolean;
  /** HTTP/2 limits per connection (defaults: `DEFAULT_HTTP2`). */
  http2?: Partial<Http2Limits>;
}

export interface Http2Limits {
  /** Calls open at once on one connection; more wait at the client. */
  maxConcurrentStreams: number;
  /** The server pings a connection this often, and drops it when no answer comes in time. */
  keepaliveTimeMs: number;
  keepaliveTimeoutMs: number;
  /** A connection without calls for this long is closed (the client reconnects when it needs). */
  maxConnectionIdleMs: number;
}

export const DEFAULT_HTTP2: Http2Limits = {
  maxConcurrentStreams: 100,
  keepaliveTimeMs: 60_000,
  keepaliveTimeoutMs: 20_000,
  maxConnectionIdleMs: 300_000,
};

export interface GrpcServerStats extends ListenerStats {
  callsInflight: number;
}

export interface GrpcServer {
  readonly health: ServingHealth;
  /** Binds and starts serving; resolves with the bound address. */
  start(): Promise<{ host: string; port: number }>;
  /**
   * NOT_SERVING at once; no new connections or calls (UNAVAILABLE); then `drain` (the domain's
   * own wind-down: jobs cancelled so their streams get a final event, inference finished); then
   * calls still running get until `graceMs` after the start, after which their signals abort
   * and the connections close. Idempotent; bounded by `graceMs` whatever a stream does.
   */
  shutdown(opts?: { graceMs?: number; drain?: () => Promise<void> }): Promise<void>;
  stats(): GrpcServerStats;
}

class Inflight implements InflightTracker {
  count = 0;
  #idle: (() => void)[] = [];
  begin() {
    this.count++;
  }
  end() {
    this.count--;
    if (this.count === 0) { for (const f of this.#idle.splice(0)) f(); }
  }
  /** Resolves when no call is running. */
  idle(): Promise<void> {
    return this.count === 0 ? Promise.resolve() : new Promise((r) => this.#idle.push(r));
  }
}

/** Time given to the last answers to leave before connections close at shutdown. */
const FLUSH_MS = 100;

/** Resolves with `p`, or after `ms`, whichever comes first. */
function within(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p.then(() => {}),
    new Promise<void>((r) => timer = setTimeout(r, Math.max(0, ms))),
  ]).finally(() => clearTimeout(timer));
}

function checkOptions(opts: GrpcServerOptions) {
  const port = opts.port ?? 50051;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`port must be an integer in [0, 65535]: found ${opts.port}`);
  }
  for (const k of ["maxReceiveMessageBytes", "maxSendMessageBytes", "shutdownGraceMs"] as const) {
    const v = opts[k];
    if (v !== undefined && (!Number.isInteger(v) || v < 0)) {
      throw new RangeError(`${k} must be a non-negative integer: found ${v}`);
    }
  }
  if (opts.tls && (!opts.tls.cert || !opts.tls.key)) {
    throw new RangeError("tls needs both cert and key (PEM)");
  }
}

export function createGrpcServer(services: Services, opts: GrpcServerOptions = {}): GrpcServer {
  checkOptions(opts);
  const proto = loadProto();
  const maxRecv = opts.maxReceiveMessageBytes ?? 64 << 20;
  const maxSend = opts.maxSendMessageBytes ?? 64 << 20;
  const h2 = { ...DEFAULT_HTTP2, ...opts.http2 };
  const server = new grpc.Server({
    "grpc.max_receive_message_length": maxRecv,
    "grpc.max_send_message_length": maxSend,
    "grpc.max_concurrent_streams": h2.maxConcurrentStreams,
    "grpc.keepalive_time_ms": h2.keepaliveTimeMs,
    "grpc.keepalive_timeout_ms": h2.keepaliveTimeoutMs,
    "grpc.max_connection_idle_ms": h2.maxConnectionIdleMs,
    // Channelz's per-call counters and traces: nothing here serves the channelz API.
    "grpc.enable_channelz": 0,
  });
  const shutdownController = new AbortController();
  /** Aborted when shutdown starts: calls arriving after it are refused. */
  const refusing = new AbortController();
  const inflight = new Inflight();
  const role = services.role ?? "both";
  const health = new ServingHealth(
    [SERVICE_NAME, HEALTH_SERVICE_NAME, INFERENCE_HEALTH_NAME, TRAINING_HEALTH_NAME],
    [
      ...(servesInference(role) ? [] : [INFERENCE_HEALTH_NAME]),
      ...(runsJobs(role) ? [] : [TRAINING_HEALTH_NAME]),
    ],
  );

  const interceptors: Interceptor[] = [...(opts.interceptors ?? [])];
  if (opts.authToken) {
    interceptors.push(
      opts.authReads ? bearerAuth(opts.authToken, ALL_METHODS) : bearerAuth(opts.authToken),
    );
  }

  server.addService(
    proto.service,
    bindService(proto.service, createHandlers(services), {
      serviceName: SERVICE_NAME,
      interceptors,
      serverSignal: shutdownController.signal,
      refuseSignal: refusing.signal,
      inflight,
    }),
  );
  health.addToServer(server);
  if (opts.reflection !== false) {
    new ReflectionService(proto.packageDefinition).addToServer(server);
  }

  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const listener = new GrpcListener({
    host: opts.host ?? "127.0.0.1",
    port: opts.port ?? 50051,
    tls: opts.tls,
    filterGoaway: opts.filterGoaway,
    inject: (conn) => injector.injectConnection(conn),
  });

  let shutdownPromise: Promise<void> | undefined;
  return {
    health,
    start: () => listener.listen(),
    shutdown({ graceMs = opts.shutdownGraceMs ?? 10_000, drain } = {}) {
      // Not grpc-js's tryShutdown: on Deno it closes sessions with calls still running, cutting
      // them with "Socket closed". The service drains its own calls instead.
      shutdownPromise ??= (async () => {
        const deadline = performance.now() + graceMs;
        const left = () => deadline - performance.now();
        health.setAllNotServing();
        listener.close();
        refusing.abort();
        if (drain) await within(drain(), left());
        await within(inflight.idle(), left());
        // Whatever still runs is cancelled, given a moment to send its status.
        shutdownController.abort(new DOMException("the server is shutting down", "AbortError"));
        await within(inflight.idle(), Math.min(250, Math.max(0, left())));
        // The answers written last still have to reach the wire before the sessions close (Deno's
        // HTTP/2 resets streams whose data is still queued): a short flush, then cut.
        await new Promise((r) => setTimeout(r, Math.min(FLUSH_MS, Math.max(0, left()))));
        // Sockets first: a session that sends GOAWAY after many streams trips the same nghttp2
        // assertion as a received one on Deno (denoland/deno#36788); a closed socket sends none.
        listener.destroyConnections();
        server.forceShutdown();
      })();
      return shutdownPromise;
    },
    stats: () => ({ ...listener.stats, callsInflight: inflight.count }),
  };
}
