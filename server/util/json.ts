/** JSON files that must hold an object, with errors that name the file. */
import { invalidArgument } from "../errors.ts";
export function parseJsonObject(text: string, file: string): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw invalidArgument(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw invalidArgument(`${file}: expected a JSON object at the top level`);
  }
  return raw as Record<string, unknown>;
}

/** `r[key]` (or `fallback` when absent) as a positive integer; a RangeError names file and key. */
export function positiveInt(
  r: Record<string, unknown>,
  key: string,
  file: string,
  fallback?: number,
): number {
  const v = r[key] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new RangeError(
      `${file}: ${key} must be a positive integer: found ${JSON.stringify(r[key])}`,
    );
  }
  return v;
}
