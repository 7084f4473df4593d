/**
 * Long synchronous work (a training step, a validation pass, tokenising a dataset) would starve
 * the event loop: gRPC health checks, event streams and inference requests would wait until it
 * ends. Such loops call a yielder between units of work; it gives the event loop a turn (a
 * macrotask, not a microtask) once `everyMs` have passed since its last turn, so short units
 * cost nothing and long ones never hold the loop for more than about one unit.
 */
export type Yielder = () => Promise<void>;

export function createYielder(everyMs = 20, now: () => number = () => performance.now()): Yielder {
  let last = now();
  return async () => {
    if (now() - last < everyMs) return;
    await new Promise<void>((resolve) => setTimeout(resolve, 0));
    last = now();
  };
}
