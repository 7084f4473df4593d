/**
 * Loads `proto/` at run time with @grpc/proto-loader: the PromptLearning service and the standard
 * health service, in one package definition (which reflection also serves). The TypeScript types
 * in `gen/` come from the same files with the same options (see `generate.ts`), so what a
 * handler receives is what its type says.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";
import type { ProtoGrpcType as HealthGrpcType } from "./gen/health.ts";
import type { ProtoGrpcType } from "./gen/prompt_learning.ts";
import type { HealthDefinition } from "./gen/grpc/health/v1/Health.ts";
import type { PromptLearningDefinition } from "./gen/promptlearning/v1/PromptLearning.ts";

/** Keep in step with the flags in `generate.ts`. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** The directory holding `promptlearning/v1/prompt_learning.proto`. */
export const PROTO_ROOT = fileURLToPath(new URL("./", import.meta.url));
export const PROTO_FILE = "promptlearning/v1/prompt_learning.proto";
export const HEALTH_PROTO_FILE = "grpc/health/v1/health.proto";
export const SERVICE_NAME = "promptlearning.v1.PromptLearning";
export const HEALTH_SERVICE_NAME = "grpc.health.v1.Health";

export interface LoadedProto {
  packageDefinition: protoLoader.PackageDefinition;
  service: PromptLearningDefinition;
  health: HealthDefinition;
  /** Client constructors: `grpcObject.promptlearning.v1.PromptLearning`. */
  grpcObject: ProtoGrpcType & HealthGrpcType;
}

/** Loads the service definitions (synchronously; a few milliseconds). */
export function loadProto(): LoadedProto {
  const packageDefinition = protoLoader.loadSync([PROTO_FILE, HEALTH_PROTO_FILE], {
    ...LOADER_OPTIONS,
    includeDirs: [PROTO_ROOT],
  });
  const grpcObject = grpc.loadPackageDefinition(packageDefinition) as unknown as
    & ProtoGrpcType
    & HealthGrpcType;
  return {
    packageDefinition,
    service: grpcObject.promptlearning.v1.PromptLearning.service,
    health: grpcObject.grpc.health.v1.Health.service,
    grpcObject,
  };
}
