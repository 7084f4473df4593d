/**
 * Long synchronous work (a training step, a validation pass, tokenising a dataset) would starve
 * the event loop: gRPC health checks, event streams and inference requests would wait until it
 * ends. Such loops call a yielder between units of work; it gives the event loop a turn (a
 * macrotask, not a microtask) once `everyMs` have passed since its last turn, so short units
 * cost nothing and long ones never hold the loop for more than about one unit.
 */
export type Yielder = () => Promise<void>;

/** A 0 ms timer: in Deno, the wait that lets I/O run (1-2 ms: the clamp and epoll's granularity). */
export const timerTurn = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 0));

/** `turn` gives the loop its turn (default `timerTurn`; tests pass their own). */
export function createYielder(
  everyMs = 20,
  now: () => number = () => performance.now(),
  turn: () => Promise<void> = timerTurn,
): Yielder {
  let last = now();
  return async () => {
    if (now() - last < everyMs) return;
    await turn();
    last = now();
  };
}
