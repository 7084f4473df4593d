/** Plain JSON values <-> google.protobuf.Struct as grpc-js (proto-loader) sends it. */
import type { Struct } from "../proto/gen/google/protobuf/Struct.ts";
import type { Value } from "../proto/gen/google/protobuf/Value.ts";

export function toValue(v: unknown): Value {
  if (v === null || v === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof v === "string") return { stringValue: v };
  if (typeof v === "number") return { numberValue: v };
  if (typeof v === "boolean") return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: toStruct(v as Record<string, unknown>) };
}

/** A dataset record (or any JSON object) as a Struct. */
export function toStruct(o: Record<string, unknown>): Struct {
  return { fields: Object.fromEntries(Object.entries(o).map(([k, v]) => [k, toValue(v)])) };
}
