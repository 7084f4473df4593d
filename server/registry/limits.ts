/**
 * What serving can hold, checked where tasks are made too (registration, training), so that
 * nothing is stored that every Infer would then refuse.
 */
import { invalidArgument } from "../errors.ts";

/** The most virtual tokens a served task may have (rows of one prompt slot). Default 128. */
export const DEFAULT_MAX_VIRTUAL_TOKENS = 128;

/** Throws invalid_argument unless 1 <= n <= max, in the same words wherever it is checked. */
export function checkServableVirtualTokens(what: string, n: number, max: number): void {
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw invalidArgument(
      `${what}: total_virtual_tokens must be in [1, ${max}] (the server's max_virtual_tokens): found ${n}`,
      "max_virtual_tokens",
    );
  }
}
