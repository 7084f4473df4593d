/**
 * The standard gRPC health service (`grpc.health.v1.Health`) from `grpc-health-check`, the
 * package grpc-node keeps for it: Check answers a service's status ("" is the server as a whole,
 * NOT_FOUND for an unknown name); Watch streams it and every change. Shutdown sets NOT_SERVING
 * first so that load balancers and Kubernetes probes stop sending work.
 *
 * Two more names tell the replica's role (REPLICA_ROLE): "inference" is SERVING where Infer is
 * answered, "training" where jobs are run; a Kubernetes readiness probe of the inference
 * Deployment checks the first, so a replica that only trains never receives inference traffic.
 */
import type * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";

/** Health name that is SERVING where this replica answers inference. */
export const INFERENCE_HEALTH_NAME = "inference";
/** Health name that is SERVING where this replica runs training and evaluation jobs. */
export const TRAINING_HEALTH_NAME = "training";

export class ServingHealth {
  readonly #impl: HealthImplementation;
  readonly #names: string[];

  /**
   * Every name in `services`, and "" for the whole server, starts SERVING, but those in
   * `notServing`, which start (and stay) NOT_SERVING.
   */
  constructor(services: Iterable<string>, notServing: Iterable<string> = []) {
    this.#names = ["", ...services];
    const off = new Set(notServing);
    this.#impl = new HealthImplementation(
      Object.fromEntries(
        this.#names.map((n) => [n, off.has(n) ? "NOT_SERVING" as const : "SERVING" as const]),
      ),
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
