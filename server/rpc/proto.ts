/**
 * Loads `proto/promptlearning/v1/prompt_learning.proto` at run time with @grpc/proto-loader.
 * The TypeScript types in `gen/` come from the same file with the same options (see
 * `gen_types.ts`), so what a handler receives is what its type says.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";
import type { ProtoGrpcType } from "./gen/prompt_learning.ts";
import type { PromptLearningDefinition } from "./gen/promptlearning/v1/PromptLearning.ts";

/** Keep in step with the flags in `gen_types.ts`. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** The directory holding `promptlearning/v1/prompt_learning.proto`. */
export const PROTO_ROOT = fileURLToPath(new URL("../../proto/", import.meta.url));
export const PROTO_FILE = "promptlearning/v1/prompt_learning.proto";
export const SERVICE_NAME = "promptlearning.v1.PromptLearning";

export interface LoadedProto {
  packageDefinition: protoLoader.PackageDefinition;
  service: PromptLearningDefinition;
  /** The client constructor for `promptlearning.v1.PromptLearning`. */
  grpcObject: ProtoGrpcType;
}

/** Loads the service definition (synchronously; a few milliseconds). */
export function loadProto(): LoadedProto {
  const packageDefinition = protoLoader.loadSync(PROTO_FILE, {
    ...LOADER_OPTIONS,
    includeDirs: [PROTO_ROOT],
  });
  const grpcObject = grpc.loadPackageDefinition(packageDefinition) as unknown as ProtoGrpcType;
  return {
    packageDefinition,
    service: grpcObject.promptlearning.v1.PromptLearning.service,
    grpcObject,
  };
}
