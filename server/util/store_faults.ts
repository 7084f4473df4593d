/**
 * Counts a store's own failures (for the job store's and the registry's error metrics) without
 * touching the stores: a wrapper that sees every method's rejection and passes it on unchanged.
 */
import { type ErrorKind, errorKind, isDiskFull, ServiceError } from "../errors.ts";

/**
 * The kind of `err` when it is the store failing (a bug, a database away, damaged bytes, a full
 * disk); undefined when it is the store answering (not found, already exists, a refused input,
 * a cancelled call), which is no fault of the store's.
 */
export function storeFault(err: unknown): ErrorKind | undefined {
  const kind = errorKind(err);
  if (kind === "internal" || kind === "unavailable" || kind === "data_loss") return kind;
  // A full disk (errors.diskFull) keeps the OS's error as its cause; a limit on tasks does not.
  if (kind === "resource_exhausted" && err instanceof ServiceError && isDiskFull(err.cause)) {
    return kind;
  }
  return undefined;
}

/**
 * `store` with every method that returns a promise reporting its faults to `onFault` (the method's
 * name and `storeFault`'s kind) before rejecting as before. Properties and synchronous results are
 * the store's own.
 */
export function countingFaults<T extends object>(
  store: T,
  onFault: (operation: string, kind: ErrorKind) => void,
): T {
  const wrapped = new Map<PropertyKey, unknown>();
  return new Proxy(store, {
    get(target, prop) {
      // The target as receiver: methods and getters reach their private fields.
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      let fn = wrapped.get(prop);
      if (!fn) {
        fn = (...args: unknown[]) => {
          const out = value.apply(target, args);
          if (!(out instanceof Promise)) return out;
          return out.catch((e: unknown) => {
            const kind = storeFault(e);
            if (kind) onFault(String(prop), kind);
            throw e;
          });
        };
        wrapped.set(prop, fn);
      }
      return fn;
    },
  });
}
