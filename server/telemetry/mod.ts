/** OpenTelemetry for the service: see `telemetry.ts`. */
export {
  createTelemetry,
  type CreateTelemetryOptions,
  type InferenceBatchInfo,
  type Telemetry,
  type TelemetryConfig,
  telemetryConfigFromEnv,
  type TrainingStepInfo,
} from "./telemetry.ts";
