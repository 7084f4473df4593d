/**
 * The PromptLearning handlers: each converts its request (`convert.ts`), calls a domain service,
 * and converts the answer back. No rule is checked here but the replica's role (a replica that
 * only trains refuses inference); every failure is thrown and translated by `errors.ts`.
 */
import { ServiceError } from "../errors.ts";
import type { TaskService } from "../registry/task_service.ts";
import { type ReplicaRole, servesInference } from "../replica_role.ts";
import type { InferenceService } from "../serving/inference_service.ts";
import { isTerminal } from "../training/events.ts";
import type { TrainingService } from "../training/training_service.ts";
import type { ServiceImpl } from "./call.ts";
import {
  toEvaluateRequest,
  toInferenceRequest,
  toInferResult,
  toPageRequest,
  toProtoEvent,
  toProtoJob,
  toProtoTask,
  toRegisterTaskRequest,
  toStreamEvent,
  toTrainRequest,
} from "./convert.ts";

/** The domain services the handlers call. */
export interface Services {
  training: TrainingService;
  tasks: TaskService;
  inference: InferenceService;
  /** What this replica does (REPLICA_ROLE). Default both. */
  role?: ReplicaRole;
}

/** UNAVAILABLE on a replica that only trains: the client (or its balancer) goes to another. */
function refuseInference(role: ReplicaRole | undefined): void {
  if (role && !servesInference(role)) {
    throw new ServiceError(
      "unavailable",
      `this replica only trains (REPLICA_ROLE=${role}): send inference to a serving replica`,
    );
  }
}

export function createHandlers({ training, tasks, inference, role }: Services): ServiceImpl {
  return {
    async *Train(req, ctx) {
      // A caller that gave up before its job was stored (deadline, cancel) leaves no job; a retry
      // with the same request_id streams the job the first call made.
      const job = await training.submit(toTrainRequest(req), ctx.signal);
      for await (const e of training.events(job.id, 0, ctx.signal)) {
        yield toProtoEvent(e);
        if (isTerminal(e.event)) return;
      }
    },

    async *Evaluate(req, ctx) {
      const r = toEvaluateRequest(req);
      const job = await training.evaluate(r, r.requestId, ctx.signal);
      for await (const e of training.events(job.id, 0, ctx.signal)) {
        yield toProtoEvent(e);
        if (isTerminal(e.event)) return;
      }
    },

    async *WatchJob(req, ctx) {
      for await (const e of training.events(req.jobId, req.afterSequence, ctx.signal)) {
        yield toProtoEvent(e);
        if (isTerminal(e.event)) return;
      }
    },

    async GetJob(req) {
      return toProtoJob(await training.get(req.jobId));
    },

    async ListJobs(req) {
      const page = await training.list(toPageRequest(req));
      return { jobs: page.items.map(toProtoJob), nextPageToken: page.nextPageToken };
    },

    async CancelJob(req) {
      return toProtoJob(await training.cancel(req.jobId));
    },

    async RegisterTask(req, ctx) {
      // The call's signal reaches the store's commit point: a write whose caller's deadline
      // passed (or who cancelled) before it committed is abandoned, not committed unseen.
      return toProtoTask(await tasks.register(toRegisterTaskRequest(req), ctx.signal));
    },

    async GetTask(req) {
      return toProtoTask(await tasks.describe(req.name, req.version));
    },

    async ListTasks(req) {
      const page = await tasks.list(toPageRequest(req));
      return { tasks: page.items.map(toProtoTask), nextPageToken: page.nextPageToken };
    },

    async DeleteTask(req) {
      return await tasks.delete(req.name);
    },

    async Infer(req, ctx) {
      refuseInference(role);
      const items = await inference.inferMany(req.requests.map(toInferenceRequest), ctx.signal);
      return { results: items.map((item, i) => toInferResult(item, i, ctx.signal)) };
    },

    async *InferStream(req, ctx) {
      refuseInference(role);
      for await (const e of inference.inferStream(toInferenceRequest(req), ctx.signal)) {
        yield toStreamEvent(e);
      }
    },
  };
}
