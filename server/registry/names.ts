/** Task names double as directory names, so the pattern leaves no room for path tricks. */
import { invalidArgument } from "../errors.ts";

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Throws a TypeError/RangeError unless `name` is a valid task name. */
export function validateTaskName(name: unknown, field = "name"): string {
  if (typeof name !== "string") {
    throw invalidArgument(`${field} must be a string: found ${typeof name}`);
  }
  if (!NAME.test(name) || name.includes("..")) {
    throw invalidArgument(
      `${field} must match ${NAME.source} and not contain "..": found ${JSON.stringify(name)}`,
    );
  }
  return name;
}

/** Whether a directory entry could be a task (internal entries start with "."). */
export function isTaskName(name: string): boolean {
  return NAME.test(name) && !name.includes("..");
}

/** Throws unless `version` is a positive integer. */
export function validateVersion(version: unknown, field = "version"): number {
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 1) {
    throw invalidArgument(`${field} must be a positive integer: found ${JSON.stringify(version)}`);
  }
  return version;
}
