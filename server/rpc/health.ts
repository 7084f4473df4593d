/**
 * The standard gRPC health service (`grpc.health.v1.Health`) from `grpc-health-check`, the
 * package grpc-node keeps for it: Check answers a service's status ("" is the server as a whole,
 * NOT_FOUND for an unknown name); Watch streams it and every change. Shutdown sets NOT_SERVING
 * first so that load balancers and Kubernetes probes stop sending work.
 */
import type * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";

export class ServingHealth {
  readonly #impl: HealthImplementation;
  readonly #names: string[];

  /** Every name in `services`, and "" for the whole server, starts SERVING. */
  constructor(services: Iterable<string>) {
    this.#names = ["", ...services];
    this.#impl = new HealthImplementation(
      Object.fromEntries(this.#names.map((n) => [n, "SERVING" as const])),
    );
  }

  addToServer(server: grpc.Server): void {
    this.#impl.addToServer(server);
  }

  /** Every known service to NOT_SERVING (the first step of shutdown); watchers are told. */
  setAllNotServing(): void {
    for (const n of this.#names) this.#impl.setStatus(n, "NOT_SERVING");
  }
}
