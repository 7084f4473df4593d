/**
 * The PromptLearning handlers: protocol checks and conversions around the ports. No domain logic
 * lives here; every failure is thrown and translated by `errors.ts`.
 */
import { status } from "@grpc/grpc-js";
import type { ServiceImpl } from "./call.ts";
import {
  checkName,
  isTerminal,
  type PagingLimits,
  toCompletion,
  toInferInput,
  toPageRequest,
  toProtoEvent,
  toProtoJob,
  toProtoTask,
  toRegisterInput,
  toTrainSubmission,
} from "./convert.ts";
import { RpcError, toStatus } from "./errors.ts";
import type { InferResult } from "../../proto/gen/promptlearning/v1/InferResult.ts";
import type { InferInput, ServicePorts } from "./ports.ts";

export interface HandlerLimits extends PagingLimits {
  /** Requests in one Infer call. Default 64. */
  maxInferBatch: number;
  /** Characters of config_yaml. Default 1 MiB. */
  maxConfigYaml: number;
  /** Floats in a registered prompt table. Default 4M (16 MiB). */
  maxTableValues: number;
}

export const DEFAULT_HANDLER_LIMITS: HandlerLimits = {
  defaultPageSize: 50,
  maxPageSize: 1000,
  maxInferBatch: 64,
  maxConfigYaml: 1 << 20,
  maxTableValues: 4 << 20,
};

export function createHandlers(
  ports: ServicePorts,
  limits: HandlerLimits = DEFAULT_HANDLER_LIMITS,
): ServiceImpl {
  const { training, tasks, inference } = ports;
  return {
    async *Train(req, ctx) {
      const submission = toTrainSubmission(req, limits.maxConfigYaml);
      const job = await training.start(submission, ctx.signal);
      for await (const e of training.events(job.id, 0, ctx.signal)) {
        yield toProtoEvent(e);
        if (isTerminal(e)) return;
      }
    },

    async *WatchJob(req, ctx) {
      const id = checkName(req.jobId, "job_id");
      if (!Number.isSafeInteger(req.afterSequence) || req.afterSequence < 0) {
        throw new RpcError(
          status.INVALID_ARGUMENT,
          `after_sequence must be >= 0: found ${req.afterSequence}`,
        );
      }
      for await (const e of training.events(id, req.afterSequence, ctx.signal)) {
        yield toProtoEvent(e);
        if (isTerminal(e)) return;
      }
    },

    async GetJob(req) {
      return toProtoJob(await training.get(checkName(req.jobId, "job_id")));
    },

    async ListJobs(req) {
      const page = await training.list(toPageRequest(req.pageSize, req.pageToken, limits));
      return { jobs: page.items.map(toProtoJob), nextPageToken: page.nextPageToken };
    },

    async CancelJob(req) {
      return toProtoJob(await training.cancel(checkName(req.jobId, "job_id")));
    },

    async RegisterTask(req, ctx) {
      return toProtoTask(await tasks.register(toRegisterInput(req, limits), ctx.signal));
    },

    async GetTask(req) {
      const name = checkName(req.name, "name");
      if (req.version !== undefined && req.version < 1) {
        throw new RpcError(
          status.INVALID_ARGUMENT,
          `version must be >= 1 when set: found ${req.version}`,
        );
      }
      return toProtoTask(await tasks.get(name, req.version));
    },

    async ListTasks(req) {
      const page = await tasks.list(toPageRequest(req.pageSize, req.pageToken, limits));
      return { tasks: page.items.map(toProtoTask), nextPageToken: page.nextPageToken };
    },

    async DeleteTask(req) {
      const r = await tasks.delete(checkName(req.name, "name"));
      return { name: r.name, versionsDeleted: r.versionsDeleted };
    },

    async Infer(req, ctx) {
      const n = req.requests.length;
      if (n === 0) {
        throw new RpcError(status.INVALID_ARGUMENT, "requests must hold at least one request");
      }
      if (n > limits.maxInferBatch) {
        throw new RpcError(
          status.RESOURCE_EXHAUSTED,
          `requests must hold at most ${limits.maxInferBatch} requests (the server's max_infer_batch): found ${n}`,
        );
      }
      // A request that fails its checks gets its own error; the others still run.
      const results: InferResult[] = new Array(n);
      const valid: InferInput[] = [];
      const at: number[] = [];
      req.requests.forEach((r, i) => {
        try {
          valid.push(toInferInput(r, `requests[${i}]`));
          at.push(i);
        } catch (err) {
          const s = toStatus(err);
          results[i] = { error: { code: s.code, message: s.details } };
        }
      });
      if (valid.length > 0) {
        const outcomes = await inference.infer(valid, ctx.signal, ctx.deadline);
        if (outcomes.length !== valid.length) {
          throw new RpcError(
            status.INTERNAL,
            `inference returned ${outcomes.length} results for ${valid.length} requests`,
          );
        }
        outcomes.forEach((o, j) => {
          if (o.ok) {
            results[at[j]] = { completion: toCompletion(o.result) };
          } else {
            const s = toStatus(o.error);
            results[at[j]] = {
              error: { code: s.code, message: `requests[${at[j]}]: ${s.details}` },
            };
          }
        });
      }
      return { results };
    },

    async *InferStream(req, ctx) {
      const input = toInferInput(req, "request");
      for await (const item of inference.stream(input, ctx.signal)) {
        if (item.type === "token") {
          yield {
            token: { tokenId: item.tokenId, text: item.text, logprob: item.logprob ?? 0 },
          };
        } else {
          yield { done: toCompletion(item.result) };
          return;
        }
      }
    },
  };
}
