/** Checks of a TaskEvaluation before any store keeps it, one rule each, naming the field. */
import { invalidArgument } from "../errors.ts";
import type { TaskEvaluation } from "./types.ts";

export function validateEvaluation(e: TaskEvaluation): TaskEvaluation {
  const fail = (field: string, what: string) => {
    throw invalidArgument(`evaluation.${field} must be ${what}`);
  };
  if (typeof e.id !== "string" || !/^[A-Za-z0-9_.-]{1,64}$/.test(e.id)) {
    fail("id", "1 to 64 letters, digits, '_', '.' or '-'");
  }
  if (typeof e.createdAt !== "string" || Number.isNaN(Date.parse(e.createdAt))) {
    fail("createdAt", "an ISO 8601 time");
  }
  if (typeof e.dataset !== "string" || e.dataset.length > 1024) {
    fail("dataset", "a string of at most 1024 characters");
  }
  if (!Number.isInteger(e.examples) || e.examples < 0) fail("examples", "an integer >= 0");
  for (const [k, v] of Object.entries(e.metrics ?? {})) {
    if (typeof v !== "number" || !Number.isFinite(v)) fail(`metrics.${k}`, "a finite number");
  }
  if (e.labels !== undefined || e.confusion !== undefined) {
    const n = e.labels?.length ?? -1;
    if (!Array.isArray(e.labels) || e.labels.some((l) => typeof l !== "string")) {
      fail("labels", "a list of strings");
    }
    if (
      !Array.isArray(e.confusion) || e.confusion.length !== n ||
      e.confusion.some((row) =>
        !Array.isArray(row) || row.length !== n || row.some((c) => !Number.isInteger(c) || c < 0)
      )
    ) {
      fail("confusion", `a ${n} x ${n} matrix of counts`);
    }
  }
  return structuredClone(e);
}
