/**
 * Bearer-token authentication for the mutating calls: when the server has a token, Train,
 * Evaluate, CancelJob, RegisterTask and DeleteTask need `authorization: Bearer <token>` metadata; anything
 * else is UNAUTHENTICATED. Reads stay open.
 */
import type { Interceptor } from "./call.ts";
import { unauthenticated } from "../errors.ts";

/** Every PromptLearning method (AUTH_READS protects them all). */
export const ALL_METHODS: ReadonlySet<string> = new Set([
  "Train",
  "WatchJob",
  "GetJob",
  "ListJobs",
  "CancelJob",
  "Evaluate",
  "RegisterTask",
  "GetTask",
  "ListTasks",
  "DeleteTask",
  "Infer",
  "InferStream",
]);

export const MUTATING_METHODS: ReadonlySet<string> = new Set([
  "Train",
  "Evaluate",
  "CancelJob",
  "RegisterTask",
  "DeleteTask",
]);

/** Compares in time independent of where the strings differ. */
function sameSecret(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a), y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

/** An interceptor requiring `token` on `methods` (default: the mutating ones). */
export function bearerAuth(
  token: string,
  methods: ReadonlySet<string> = MUTATING_METHODS,
): Interceptor {
  if (!token) throw new RangeError("bearerAuth: token must not be empty");
  return (next) => (req) => {
    if (!methods.has(req.ctx.method)) return next(req);
    const header = req.ctx.header.get("authorization");
    if (header === undefined) {
      return Promise.reject(
        unauthenticated(
          `${req.ctx.method} needs "authorization: Bearer <token>" metadata: none was sent`,
        ),
      );
    }
    const m = /^Bearer\s+(.+)$/i.exec(header.trim());
    if (!m || !sameSecret(m[1], token)) {
      return Promise.reject(
        unauthenticated(
          `${req.ctx.method}: the bearer token in the authorization metadata is not valid`,
        ),
      );
    }
    return next(req);
  };
}
