/** OpenTelemetry for the service: see `telemetry.ts`. */
export {
  createTelemetry,
  type CreateTelemetryOptions,
  type InferenceBatchInfo,
  type Telemetry,
  telemetryWanted,
  type TrainingStepInfo,
} from "./telemetry.ts";
