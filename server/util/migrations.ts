/**
 * The PostgreSQL schema, as numbered migrations applied in order at start (`db.ts`). A released
 * migration is never edited: a change is a new migration with the next number.
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "registry",
    // One row per task version; a version is immutable once inserted. Tensors live beside the
    // metadata in the same row, so a version is stored whole or not at all.
    sql: `
      CREATE TABLE task_versions (
        name text COLLATE "C" NOT NULL,
        version integer NOT NULL CHECK (version > 0),
        uid uuid NOT NULL UNIQUE,
        template jsonb NOT NULL,
        total_virtual_tokens integer NOT NULL,
        hidden_size integer NOT NULL,
        fingerprint jsonb NOT NULL,
        metrics jsonb NOT NULL,
        created_at text NOT NULL,
        source text NOT NULL,
        checksum text NOT NULL,
        encoder_kind text,
        encoder_config jsonb,
        table_data bytea NOT NULL,
        encoder_data bytea,
        PRIMARY KEY (name, version)
      );`,
  },
  {
    version: 2,
    name: "jobs",
    // A job row carries its request (so any replica can run it), its progress folded from its
    // events, and its lease: the replica in owner holds it until lease_until.
    sql: `
      CREATE TABLE jobs (
        id uuid PRIMARY KEY,
        name text NOT NULL,
        state text NOT NULL,
        request jsonb NOT NULL,
        progress jsonb NOT NULL,
        created_at timestamptz NOT NULL,
        started_at timestamptz,
        finished_at timestamptz,
        owner text,
        lease_until timestamptz,
        cancel_requested boolean NOT NULL DEFAULT false,
        attempts integer NOT NULL DEFAULT 0,
        last_sequence integer NOT NULL DEFAULT 0
      );
      CREATE INDEX jobs_claimable ON jobs (created_at) WHERE state IN ('queued', 'running', 'cancelling');
      CREATE TABLE job_events (
        job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        sequence integer NOT NULL,
        time timestamptz NOT NULL,
        event jsonb NOT NULL,
        PRIMARY KEY (job_id, sequence)
      );
      CREATE TABLE job_checkpoints (
        job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        path text NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (job_id, path)
      );`,
  },
  {
    version: 3,
    name: "registry_request_ids",
    // The request id (AIP-155) a version was registered with and its request's digest. The
    // unique index makes "of concurrent writers with one id exactly one writes" a property of
    // the database, whichever replica (or lock) the writers went through.
    sql: `
      ALTER TABLE task_versions ADD COLUMN request_id text, ADD COLUMN request_digest text;
      CREATE UNIQUE INDEX task_versions_request_id ON task_versions (name, request_id)
        WHERE request_id IS NOT NULL;`,
  },
  {
    version: 4,
    name: "job_request_ids",
    // The request id (AIP-155) a Train call was made with and its request's digest: a retry on
    // any replica finds the job the first call made.
    sql: `
      ALTER TABLE jobs ADD COLUMN request_id text, ADD COLUMN request_digest text;
      CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL;`,
  },
  {
    version: 5,
    name: "task_evaluations",
    // Evaluations of a version (Evaluate jobs' results), kept with it and gone with it; one row
    // per evaluation id, replaced when the same id is stored again.
    sql: `
      CREATE TABLE task_evaluations (
        name text COLLATE "C" NOT NULL,
        version integer NOT NULL,
        id text NOT NULL,
        seq bigserial NOT NULL,
        body jsonb NOT NULL,
        PRIMARY KEY (name, version, id),
        FOREIGN KEY (name, version) REFERENCES task_versions (name, version) ON DELETE CASCADE
      );`,
  },
];
