/**
 * Public surface of the serving layer: resident prompt tables (`PromptSlots`), the
 * continuous-batching `Scheduler`, and the task-level `InferenceService` on top of them.
 */

export type { GenerationOptions, SamplingParams } from "./generation_options.ts";
export {
  type InferenceRequest,
  type InferenceResult,
  InferenceService,
  type InferenceServiceOptions,
  type InferManyItem,
  type ServedTask,
} from "./inference_service.ts";
export {
  PromptSlots,
  type PromptSlotsOptions,
  type PromptSlotsStats,
  type ServableTable,
  type SlotLease,
} from "./prompt_slots.ts";
export type { TokenEmbedder } from "./runner.ts";
export {
  type FinishedStats,
  type FinishReason,
  type GenerateRequest,
  type GenerationResult,
  Scheduler,
  type SchedulerLimits,
  type SchedulerOptions,
  type SchedulerStats,
  type StepStats,
  type StreamEvent,
} from "./scheduler.ts";
