/** OpenTelemetry for the service, and Prometheus `/metrics`: see `telemetry.ts`. */
export {
  createTelemetry,
  type CreateTelemetryOptions,
  type InferenceBatchInfo,
  type RequestLatencyInfo,
  type Telemetry,
  telemetryWanted,
  type TrainingStepInfo,
} from "./telemetry.ts";
export type { ObservedSources } from "./service_metrics.ts";
