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
