/**
 * A typed client for promptlearning.v1.PromptLearning over grpc-js. Message types are the ones
 * generated from `proto/` (`proto/gen/`); streams are async iterables; every call takes an
 * optional deadline and AbortSignal; failures are `RpcCallError` with the gRPC code.
 *
 * ```ts
 * const client = new PromptLearningClient({ address: "127.0.0.1:50051" });
 * const [r] = await client.infer([{ task: "sentiment", fields: { sentence: "Great!" } }]);
 * client.close();
 * ```
 */
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import type { Readable } from "node:stream";
import type { HealthCheckResponse__Output } from "../proto/gen/grpc/health/v1/HealthCheckResponse.ts";
import type { HealthClient } from "../proto/gen/grpc/health/v1/Health.ts";
import type { DeleteTaskResponse__Output } from "../proto/gen/promptlearning/v1/DeleteTaskResponse.ts";
import type { EvaluateRequest } from "../proto/gen/promptlearning/v1/EvaluateRequest.ts";
import type { InferBatchResponse__Output } from "../proto/gen/promptlearning/v1/InferBatchResponse.ts";
import type { InferRequest } from "../proto/gen/promptlearning/v1/InferRequest.ts";
import type { InferResult__Output } from "../proto/gen/promptlearning/v1/InferResult.ts";
import type { InferStreamEvent__Output } from "../proto/gen/promptlearning/v1/InferStreamEvent.ts";
import type { Job__Output } from "../proto/gen/promptlearning/v1/Job.ts";
import type { ListJobsResponse__Output } from "../proto/gen/promptlearning/v1/ListJobsResponse.ts";
import type { ListTasksResponse__Output } from "../proto/gen/promptlearning/v1/ListTasksResponse.ts";
import type { PromptLearningClient as GeneratedClient } from "../proto/gen/promptlearning/v1/PromptLearning.ts";
import type { RegisterTaskRequest } from "../proto/gen/promptlearning/v1/RegisterTaskRequest.ts";
import type { Task__Output } from "../proto/gen/promptlearning/v1/Task.ts";
import type { TrainEvent__Output } from "../proto/gen/promptlearning/v1/TrainEvent.ts";
import type { TrainRequest } from "../proto/gen/promptlearning/v1/TrainRequest.ts";
import { loadProto } from "../proto/mod.ts";

export type {
  InferRequest,
  InferResult__Output as InferResult,
  InferStreamEvent__Output as InferStreamEvent,
  Job__Output as Job,
  RegisterTaskRequest,
  Task__Output as Task,
  TrainEvent__Output as TrainEvent,
  TrainRequest,
};

export interface ClientOptions {
  /** "host:port", e.g. "127.0.0.1:50051". */
  address: string;
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** TLS: `true` for the system roots, or a PEM CA certificate (string). Default: plaintext. */
  tls?: boolean | string;
  /** Largest message either way. Default 64 MiB. */
  maxMessageBytes?: number;
  /** Extra grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

export interface CallOptions {
  /** A Date, or milliseconds from now. */
  deadline?: Date | number;
  signal?: AbortSignal;
  /** Extra metadata for this call, e.g. `{ traceparent: "00-<trace>-<span>-01" }`. */
  metadata?: Record<string, string>;
}

/** A failed call: the gRPC status code and the server's message. */
export class RpcCallError extends Error {
  readonly code: grpc.status;
  readonly details: string;
  constructor(code: grpc.status, details: string, method: string) {
    super(`${method}: ${grpc.status[code] ?? code}: ${details}`);
    this.name = "RpcCallError";
    this.code = code;
    this.details = details;
  }
  /** "NOT_FOUND" */
  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }
}

function toError(err: unknown, method: string): Error {
  const e = err as Partial<grpc.ServiceError>;
  if (e && typeof e.code === "number") return new RpcCallError(e.code, e.details ?? "", method);
  return err instanceof Error ? err : new Error(String(err));
}

export class PromptLearningClient {
  readonly #client: GeneratedClient;
  readonly #health: HealthClient;
  readonly #token?: string;

  constructor(opts: ClientOptions) {
    const proto = loadProto();
    const creds = opts.tls === undefined || opts.tls === false
      ? grpc.credentials.createInsecure()
      : grpc.credentials.createSsl(
        typeof opts.tls === "string" ? Buffer.from(opts.tls) : null,
      );
    const max = opts.maxMessageBytes ?? 64 << 20;
    const options: grpc.ChannelOptions = {
      "grpc.max_receive_message_length": max,
      "grpc.max_send_message_length": max,
      // Channelz's per-call counters and traces, which nothing reads in a client.
      "grpc.enable_channelz": 0,
      ...opts.channelOptions,
    };
    this.#client = new proto.grpcObject.promptlearning.v1.PromptLearning(
      opts.address,
      creds,
      options,
    );
    this.#health = new proto.grpcObject.grpc.health.v1.Health(opts.address, creds, options);
    this.#token = opts.token;
  }

  #metadata(o: CallOptions = {}): grpc.Metadata {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(o.metadata ?? {})) md.set(k, v);
    if (this.#token) md.set("authorization", `Bearer ${this.#token}`);
    return md;
  }

  #callOptions(o: CallOptions = {}): grpc.CallOptions {
    if (o.deadline === undefined) return {};
    return {
      deadline: o.deadline instanceof Date ? o.deadline : new Date(Date.now() + o.deadline),
    };
  }

  #unary<Req, Res>(
    method: string,
    fn: (
      req: Req,
      md: grpc.Metadata,
      opts: grpc.CallOptions,
      cb: (err: grpc.ServiceError | null, res?: Res) => void,
    ) => grpc.ClientUnaryCall,
    req: Req,
    o: CallOptions = {},
  ): Promise<Res> {
    return new Promise((resolve, reject) => {
      if (o.signal?.aborted) return reject(o.signal.reason);
      const call = fn(req, this.#metadata(o), this.#callOptions(o), (err, res) => {
        o.signal?.removeEventListener("abort", cancel);
        if (err) reject(toError(err, method));
        else resolve(res as Res);
      });
      const cancel = () => call.cancel();
      o.signal?.addEventListener("abort", cancel, { once: true });
    });
  }

  async *#stream<T>(method: string, call: grpc.ClientReadableStream<T>, o: CallOptions = {}) {
    const cancel = () => call.cancel();
    o.signal?.addEventListener("abort", cancel, { once: true });
    try {
      for await (const message of call as unknown as Readable) yield message as T;
    } catch (err) {
      throw toError(err, method);
    } finally {
      o.signal?.removeEventListener("abort", cancel);
      call.cancel();
    }
  }

  /** Starts a job and follows its events until it ends (leaving the stream does not cancel it). */
  train(req: TrainRequest, o?: CallOptions): AsyncGenerator<TrainEvent__Output> {
    return this.#stream(
      "Train",
      this.#client.train(req, this.#metadata(o), this.#callOptions(o)),
      o,
    );
  }

  /**
   * Starts a job evaluating a task version and follows its events until it ends (leaving the
   * stream does not cancel it); its result is kept with the version (getTask).
   */
  evaluate(req: EvaluateRequest, o?: CallOptions): AsyncGenerator<TrainEvent__Output> {
    return this.#stream(
      "Evaluate",
      this.#client.evaluate(req, this.#metadata(o), this.#callOptions(o)),
      o,
    );
  }

  /** Events after `afterSequence` (0: all), then live ones until the job ends. */
  watchJob(
    jobId: string,
    afterSequence = 0,
    o?: CallOptions,
  ): AsyncGenerator<TrainEvent__Output> {
    return this.#stream(
      "WatchJob",
      this.#client.watchJob({ jobId, afterSequence }, this.#metadata(o), this.#callOptions(o)),
      o,
    );
  }

  getJob(jobId: string, o?: CallOptions): Promise<Job__Output> {
    return this.#unary("GetJob", this.#client.getJob.bind(this.#client), { jobId }, o);
  }

  listJobs(
    page: { pageSize?: number; pageToken?: string } = {},
    o?: CallOptions,
  ): Promise<ListJobsResponse__Output> {
    return this.#unary("ListJobs", this.#client.listJobs.bind(this.#client), page, o);
  }

  cancelJob(jobId: string, o?: CallOptions): Promise<Job__Output> {
    return this.#unary("CancelJob", this.#client.cancelJob.bind(this.#client), { jobId }, o);
  }

  /**
   * Registers a version. With `requestId` (a UUID, e.g. `crypto.randomUUID()`, kept for every
   * retry of this one registration) a retry after a dropped connection or a passed deadline
   * returns the version the first attempt made, or writes it if that attempt wrote nothing; the
   * same id with a different request is ALREADY_EXISTS.
   */
  registerTask(req: RegisterTaskRequest, o?: CallOptions): Promise<Task__Output> {
    return this.#unary("RegisterTask", this.#client.registerTask.bind(this.#client), req, o);
  }

  getTask(name: string, version?: number, o?: CallOptions): Promise<Task__Output> {
    return this.#unary(
      "GetTask",
      this.#client.getTask.bind(this.#client),
      version === undefined ? { name } : { name, version },
      o,
    );
  }

  listTasks(
    page: { pageSize?: number; pageToken?: string } = {},
    o?: CallOptions,
  ): Promise<ListTasksResponse__Output> {
    return this.#unary("ListTasks", this.#client.listTasks.bind(this.#client), page, o);
  }

  deleteTask(name: string, o?: CallOptions): Promise<DeleteTaskResponse__Output> {
    return this.#unary("DeleteTask", this.#client.deleteTask.bind(this.#client), { name }, o);
  }

  /** One result per request, in order. */
  async infer(requests: InferRequest[], o?: CallOptions): Promise<InferResult__Output[]> {
    const res = await this.#unary<{ requests: InferRequest[] }, InferBatchResponse__Output>(
      "Infer",
      this.#client.infer.bind(this.#client),
      { requests },
      o,
    );
    return res.results;
  }

  inferStream(request: InferRequest, o?: CallOptions): AsyncGenerator<InferStreamEvent__Output> {
    return this.#stream(
      "InferStream",
      this.#client.inferStream(request, this.#metadata(o), this.#callOptions(o)),
      o,
    );
  }

  /** grpc.health.v1 Check: "SERVING", "NOT_SERVING", ... ("" is the whole server). */
  async health(service = "", o?: CallOptions): Promise<HealthCheckResponse__Output["status"]> {
    const res = await this.#unary<{ service: string }, HealthCheckResponse__Output>(
      "Health.Check",
      this.#health.check.bind(this.#health),
      { service },
      o,
    );
    return res.status;
  }

  /** grpc.health.v1 Watch: the status now, then every change, until the call ends. */
  async *watchHealth(
    service = "",
    o?: CallOptions,
  ): AsyncGenerator<HealthCheckResponse__Output["status"]> {
    const call = this.#health.watch({ service }, this.#metadata(o), this.#callOptions(o));
    for await (const r of this.#stream<HealthCheckResponse__Output>("Health.Watch", call, o)) {
      yield r.status;
    }
  }

  /** Waits until the channel is connected (or the deadline passes). */
  waitForReady(deadlineMs = 5000): Promise<void> {
    return new Promise((resolve, reject) =>
      this.#client.waitForReady(Date.now() + deadlineMs, (err) => err ? reject(err) : resolve())
    );
  }

  close(): void {
    this.#client.close();
    this.#health.close();
  }
}
