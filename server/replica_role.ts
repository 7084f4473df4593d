/**
 * What a replica does (REPLICA_ROLE): `serve` answers inference and never claims a job, `train`
 * claims jobs and refuses inference, `both` (the default) does both on one engine, inference
 * first. Every replica answers the rest of the API (tasks, jobs, Train and Evaluate submissions),
 * so a job sent to a serving replica is queued in the shared database for a training one.
 */
export type ReplicaRole = "serve" | "train" | "both";

export const REPLICA_ROLES: readonly ReplicaRole[] = ["serve", "train", "both"];

/** Whether a replica of `role` answers Infer and InferStream. */
export const servesInference = (role: ReplicaRole): boolean => role !== "train";

/** Whether a replica of `role` claims and runs jobs (training and evaluation). */
export const runsJobs = (role: ReplicaRole): boolean => role !== "serve";

/** `value` as a role; a RangeError naming `source` otherwise. */
export function parseReplicaRole(value: string, source: string): ReplicaRole {
  const v = value.trim().toLowerCase();
  if ((REPLICA_ROLES as readonly string[]).includes(v)) return v as ReplicaRole;
  throw new RangeError(
    `${source} must be one of ${REPLICA_ROLES.join(", ")}: found ${JSON.stringify(value)}`,
  );
}
