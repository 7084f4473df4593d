/**
 * The standard gRPC health service (`grpc.health.v1.Health`): Check answers the current status of
 * a service ("" is the server as a whole); Watch streams it, then every change, until the client
 * goes away. Shutdown sets NOT_SERVING first so that load balancers stop sending work.
 */
import type { CallContext } from "./call.ts";
import { notFound } from "../errors.ts";
import type { HealthCheckRequest__Output } from "../../proto/gen/grpc/health/v1/HealthCheckRequest.ts";
import type {
  HealthCheckResponse,
  HealthCheckResponse__Output,
} from "../../proto/gen/grpc/health/v1/HealthCheckResponse.ts";

export type ServingStatus = HealthCheckResponse__Output["status"];

export class HealthStatus {
  readonly #statuses = new Map<string, ServingStatus>();
  readonly #watchers = new Set<() => void>();

  constructor(services: Iterable<string>) {
    this.#statuses.set("", "SERVING");
    for (const s of services) this.#statuses.set(s, "SERVING");
  }

  get(service: string): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  set(service: string, value: ServingStatus): void {
    this.#statuses.set(service, value);
    for (const wake of [...this.#watchers]) wake();
  }

  /** Every known service to NOT_SERVING (the first step of shutdown). */
  setAllNotServing(): void {
    for (const s of this.#statuses.keys()) this.#statuses.set(s, "NOT_SERVING");
    for (const wake of [...this.#watchers]) wake();
  }

  /** Resolves at the next change or when `signal` aborts. */
  changed(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        this.#watchers.delete(wake);
        signal.removeEventListener("abort", wake);
        resolve();
      };
      this.#watchers.add(wake);
      signal.addEventListener("abort", wake, { once: true });
    });
  }
}

export function createHealthHandlers(health: HealthStatus) {
  return {
    Check(req: HealthCheckRequest__Output): Promise<HealthCheckResponse> {
      const s = health.get(req.service);
      if (s === undefined) {
        return Promise.reject(
          notFound(`service ${JSON.stringify(req.service)} is not known`),
        );
      }
      return Promise.resolve({ status: s });
    },
    async *Watch(
      req: HealthCheckRequest__Output,
      ctx: CallContext,
    ): AsyncGenerator<HealthCheckResponse> {
      let last: ServingStatus | undefined;
      while (!ctx.signal.aborted) {
        const s = health.get(req.service) ?? "SERVICE_UNKNOWN";
        if (s !== last) {
          yield { status: s };
          last = s;
        }
        await health.changed(ctx.signal);
      }
    },
  };
}
