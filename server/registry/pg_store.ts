/**
 * The shared TaskStore: every version in one PostgreSQL table (`util/migrations.ts`), so replicas
 * on one database serve the same registry. A version row is inserted whole in one transaction
 * (metadata, table, encoder, checksum), numbered under a per-task advisory lock, and never changed.
 * A put's request id is looked up under that lock and stored in the row; a unique index on
 * (name, request_id) stops a second version from writers that did not take the lock. A put whose
 * caller's signal aborted while the transaction ran is rolled back just before COMMIT.
 *
 * Replicas keep what they have resolved (a version's metadata; decoded tensors by version uid)
 * and drop a task's entries when any replica changes it: every write sends NOTIFY registry_changed
 * with the task's name in the same transaction, delivered on commit. Entries are only trusted
 * while the LISTEN connection is up (a reconnect clears them all, since notifications sent while
 * it was down are lost); while the database is unreachable, entries already held keep serving, so
 * inference of resident tasks continues and everything else answers UNAVAILABLE.
 */
import { encodeSafetensors, parseSafetensors, readFloat32 } from "../model/safetensors.ts";
import { alreadyExists, ServiceError } from "../errors.ts";
import type { Database, Queryable } from "../util/db.ts";
import { versionChecksum } from "./checksum.ts";
import { copyEncoder, validateDraft } from "./_draft.ts";
import { TaskCorruptError, TaskNotFoundError } from "./errors.ts";
import { checkFingerprint } from "./fingerprint.ts";
import { ByteLru } from "./_lru.ts";
import { isTaskName, validateTaskName, validateVersion } from "./names.ts";
import { encodePageToken, LIST_PAGE, parsePageRequest } from "../util/paging.ts";
import { answerRetry, checkNotAborted, type PutRequest, requestOf } from "./_request.ts";
import { validateEvaluation } from "./_evaluation.ts";
import type {
  EncoderState,
  ListOptions,
  ModelFingerprint,
  PutOptions,
  TaskDraft,
  TaskEvaluation,
  TaskPage,
  TaskStore,
  TaskSummary,
  TaskVersion,
  TaskVersionMeta,
} from "./types.ts";

export const REGISTRY_CHANNEL = "registry_changed";

export interface PgTaskStoreOptions {
  fingerprint?: ModelFingerprint;
  /** Bytes of decoded tensors kept across get() calls. Default 256 MiB. */
  cacheBytes?: number;
  now?: () => Date;
}

interface Row {
  name: string;
  version: number;
  uid: string;
  template: TaskVersionMeta["template"];
  total_virtual_tokens: number;
  hidden_size: number;
  fingerprint: ModelFingerprint;
  metrics: Record<string, number>;
  created_at: string;
  source: TaskVersionMeta["source"];
  checksum: string;
  encoder_kind: "lstm" | "mlp" | null;
  encoder_config: Record<string, unknown> | null;
}

interface Resolved {
  uid: string;
  meta: TaskVersionMeta;
  encoderConfig: Record<string, unknown> | null;
}

interface Tensors {
  table: Float32Array;
  encoderState?: EncoderState;
}

const META_COLUMNS = "name, version, uid, template, total_virtual_tokens, hidden_size, " +
  "fingerprint, metrics, created_at, source, checksum, encoder_kind, encoder_config";

function metaOf(r: Row): TaskVersionMeta {
  return {
    name: r.name,
    version: r.version,
    template: r.template,
    totalVirtualTokens: r.total_virtual_tokens,
    hiddenSize: r.hidden_size,
    fingerprint: r.fingerprint,
    metrics: r.metrics,
    createdAt: r.created_at,
    source: r.source,
    checksum: r.checksum,
    ...(r.encoder_kind ? { encoderKind: r.encoder_kind } : {}),
  };
}

function bytesOf(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** A copy of `bytes` as float32 (a bytea's Buffer may sit at an unaligned offset). */
function floatsOf(bytes: Uint8Array): Float32Array {
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new Float32Array(copy.buffer);
}

function tensorBytes(t: Tensors): number {
  const enc = Object.values(t.encoderState?.tensors ?? {});
  return enc.reduce((n, x) => n + x.data.byteLength, t.table.byteLength);
}

export class PgTaskStore implements TaskStore {
  readonly #db: Database;
  readonly #fingerprint?: ModelFingerprint;
  readonly #now: () => Date;
  readonly #meta = new Map<string, Resolved>();
  readonly #tensors: ByteLru<Tensors>;
  /** Bumped by each invalidation, so a read that raced one does not cache what it read. */
  #generation = 0;

  private constructor(db: Database, opts: PgTaskStoreOptions) {
    this.#db = db;
    this.#fingerprint = opts.fingerprint;
    this.#now = opts.now ?? (() => new Date());
    this.#tensors = new ByteLru(opts.cacheBytes ?? 256 * 2 ** 20);
  }

  /** A store on `db` (already migrated), invalidated by every replica's writes. */
  static async open(db: Database, opts: PgTaskStoreOptions = {}): Promise<PgTaskStore> {
    const store = new PgTaskStore(db, opts);
    await db.listen(REGISTRY_CHANNEL, (name) => store.#invalidate(name));
    db.onConnect(() => store.#invalidate(null));
    return store;
  }

  /** Drops what is held for `name` (every task when null). */
  #invalidate(name: string | null): void {
    this.#generation++;
    if (name === null) {
      this.#meta.clear();
      return;
    }
    for (const key of [...this.#meta.keys()]) {
      if (key.startsWith(`${name}@`)) this.#meta.delete(key);
    }
  }

  async #resolve(name: string, version?: number): Promise<Resolved> {
    validateTaskName(name);
    if (version !== undefined) validateVersion(version);
    const key = `${name}@${version ?? "latest"}`;
    const held = this.#meta.get(key);
    if (held && this.#db.listening) return this.#checked(held);
    const generation = this.#generation;
    let rows: Row[];
    try {
      rows = (await this.#db.query<Row>(
        version === undefined
          ? `SELECT ${META_COLUMNS} FROM task_versions WHERE name = $1 ORDER BY version DESC LIMIT 1`
          : `SELECT ${META_COLUMNS} FROM task_versions WHERE name = $1 AND version = $2`,
        version === undefined ? [name] : [name, version],
      )).rows;
    } catch (e) {
      // The database is gone: what was resolved while it was there still stands (nobody can
      // change the registry meanwhile), so resident tasks keep serving.
      if (held && e instanceof ServiceError && e.kind === "unavailable") return this.#checked(held);
      throw e;
    }
    if (rows.length === 0) {
      if (version === undefined) throw new TaskNotFoundError(`task "${name}" does not exist`);
      const versions = await this.#versions(name);
      if (versions.length === 0) throw new TaskNotFoundError(`task "${name}" does not exist`);
      throw new TaskNotFoundError(
        `task "${name}" has no version ${version}: it has ${versions.join(", ")}`,
      );
    }
    const r = rows[0];
    const resolved = { uid: r.uid, meta: metaOf(r), encoderConfig: r.encoder_config };
    if (this.#db.listening && generation === this.#generation) {
      // Parsed metadata is small; past this many versions the cache starts over.
      if (this.#meta.size >= 10_000) this.#meta.clear();
      this.#meta.set(key, resolved);
    }
    return this.#checked(resolved);
  }

  #checked(r: Resolved): Resolved {
    if (this.#fingerprint) {
      checkFingerprint(
        this.#fingerprint,
        r.meta.fingerprint,
        `task "${r.meta.name}" v${r.meta.version}`,
      );
    }
    return r;
  }

  async describe(name: string, version?: number): Promise<TaskVersionMeta> {
    return structuredClone((await this.#resolve(name, version)).meta);
  }

  async get(name: string, version?: number): Promise<TaskVersion> {
    const r = await this.#resolve(name, version);
    let t = this.#tensors.get(r.uid);
    if (!t) {
      t = await this.#readTensors(r);
      this.#tensors.set(r.uid, t, tensorBytes(t));
    }
    return {
      ...structuredClone(r.meta),
      table: t.table.slice(),
      encoderState: copyEncoder(t.encoderState),
    };
  }

  async #readTensors(r: Resolved): Promise<Tensors> {
    const what = `task "${r.meta.name}" v${r.meta.version}`;
    const rows = (await this.#db.query<{ table_data: Uint8Array; encoder_data: Uint8Array | null }>(
      "SELECT table_data, encoder_data FROM task_versions WHERE uid = $1",
      [r.uid],
    )).rows;
    if (rows.length === 0) throw new TaskNotFoundError(`${what} was deleted`);
    const { table_data, encoder_data } = rows[0];
    const expected = r.meta.totalVirtualTokens * r.meta.hiddenSize * 4;
    if (table_data.byteLength !== expected) {
      throw new TaskCorruptError(
        `${what}: the stored table holds ${table_data.byteLength} bytes, not ${expected}; refusing to use it`,
      );
    }
    const table = floatsOf(table_data);
    let encoderState: EncoderState | undefined;
    if (r.meta.encoderKind) {
      if (!encoder_data) {
        throw new TaskCorruptError(`${what}: its encoder tensors are missing; refusing to use it`);
      }
      let parsed;
      try {
        parsed = parseSafetensors(new Uint8Array(encoder_data), `${what} encoder`);
      } catch (e) {
        throw new TaskCorruptError(`${(e as Error).message}; refusing to use ${what}`, {
          cause: e,
        });
      }
      const tensors: EncoderState["tensors"] = {};
      for (const [name, info] of parsed.tensors) {
        tensors[name] = { shape: info.shape, data: readFloat32(parsed, name) };
      }
      encoderState = { kind: r.meta.encoderKind, config: r.encoderConfig ?? {}, tensors };
    }
    const sum = versionChecksum(table, encoderState);
    if (sum !== r.meta.checksum) {
      throw new TaskCorruptError(
        `${what}: the stored tensors fail their checksum (stored ${r.meta.checksum}, the bytes ` +
          `give ${sum}); refusing to use it`,
      );
    }
    return { table, encoderState };
  }

  async put(name: string, draft: TaskDraft, options: PutOptions = {}): Promise<TaskVersion> {
    validateTaskName(name);
    const d = validateDraft(name, draft, this.#fingerprint);
    const req = requestOf(options);
    checkNotAborted(options.signal, name);
    const checksum = versionChecksum(d.table, d.encoderState);
    const createdAt = this.#now().toISOString();
    const uid = crypto.randomUUID();
    const encoderData = d.encoderState
      ? encodeSafetensors(Object.fromEntries(
        Object.entries(d.encoderState.tensors).map((
          [k, t],
        ) => [k, { dtype: "F32" as const, shape: t.shape, data: t.data }]),
      ))
      : null;
    let committed: { version: number; written: boolean };
    try {
      committed = await this.#db.tx(async (c) => {
        // Writers of one task take turns; writers of different tasks do not wait for each other.
        await c.query("SELECT pg_advisory_xact_lock(hashtext('task:' || $1))", [name]);
        if (req) {
          const earlier = await findRequest(c, name, req);
          if (earlier !== null) return { version: earlier, written: false };
        }
        const { rows } = await c.query<{ max: number | null }>(
          "SELECT max(version) AS max FROM task_versions WHERE name = $1",
          [name],
        );
        const latest = rows[0].max ?? 0;
        if (options.createOnly && latest > 0) {
          throw alreadyExists(`name: task "${name}" already exists (create_only)`);
        }
        const next = latest + 1;
        await c.query(
          `INSERT INTO task_versions (name, version, uid, template, total_virtual_tokens,
             hidden_size, fingerprint, metrics, created_at, source, checksum, encoder_kind,
             encoder_config, table_data, encoder_data, request_id, request_digest)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`,
          [
            name,
            next,
            uid,
            JSON.stringify(d.template),
            d.totalVirtualTokens,
            d.hiddenSize,
            JSON.stringify(d.fingerprint),
            JSON.stringify(d.metrics),
            createdAt,
            d.source,
            checksum,
            d.encoderState?.kind ?? null,
            d.encoderState ? JSON.stringify(d.encoderState.config) : null,
            bytesOf(d.table),
            encoderData,
            req?.id ?? null,
            req ? req.digest : null,
          ],
        );
        await notify(c, name);
        // The commit point. The statements above may have waited on a stalled database for
        // longer than the caller did; a caller that gave up meanwhile must not find its
        // version committed later, so the transaction is rolled back instead.
        checkNotAborted(options.signal, name);
        return { version: next, written: true };
      });
    } catch (e) {
      // A writer outside this replica's lock committed the same id first: its version answers.
      if (!req || !isRequestIdTaken(e)) throw e;
      const earlier = await findRequest(this.#db, name, req);
      if (earlier === null) throw e;
      committed = { version: earlier, written: false };
    }
    if (!committed.written) return await this.get(name, committed.version);
    const { version } = committed;
    this.#invalidate(name);
    this.#tensors.set(uid, { table: d.table, encoderState: d.encoderState }, tensorBytes(d));
    const meta: TaskVersionMeta = {
      name,
      version,
      template: d.template,
      totalVirtualTokens: d.totalVirtualTokens,
      hiddenSize: d.hiddenSize,
      fingerprint: d.fingerprint,
      metrics: d.metrics,
      createdAt,
      source: d.source,
      checksum,
      ...(d.encoderState ? { encoderKind: d.encoderState.kind } : {}),
    };
    return {
      ...structuredClone(meta),
      table: d.table.slice(),
      encoderState: copyEncoder(d.encoderState),
    };
  }

  async list(options?: ListOptions): Promise<TaskPage> {
    const { pageSize, after } = parsePageRequest(options ?? {}, LIST_PAGE, isTaskName);
    const { rows } = await this.#db.query<Row & { count: string }>(
      `SELECT DISTINCT ON (v.name) ${
        META_COLUMNS.split(", ").map((c) => `v.${c}`).join(", ")
      }, c.count
         FROM task_versions v
         JOIN (SELECT name, count(*) AS count FROM task_versions GROUP BY name) c USING (name)
        WHERE v.name > $1
        ORDER BY v.name, v.version DESC
        LIMIT $2`,
      [after, pageSize + 1],
    );
    const more = rows.length > pageSize;
    const page = rows.slice(0, pageSize);
    const tasks: TaskSummary[] = page.map((r) => ({
      name: r.name,
      latestVersion: r.version,
      versionCount: Number(r.count),
      latest: metaOf(r),
    }));
    return {
      tasks,
      nextPageToken: more ? encodePageToken(page[page.length - 1].name) : "",
    };
  }

  async #versions(name: string, q: Queryable = this.#db): Promise<number[]> {
    const { rows } = await q.query<{ version: number }>(
      "SELECT version FROM task_versions WHERE name = $1 ORDER BY version",
      [name],
    );
    return rows.map((r) => r.version);
  }

  async versions(name: string): Promise<number[]> {
    validateTaskName(name);
    const v = await this.#versions(name);
    if (v.length === 0) throw new TaskNotFoundError(`task "${name}" does not exist`);
    return v;
  }

  async has(name: string): Promise<boolean> {
    validateTaskName(name);
    const { rows } = await this.#db.query(
      "SELECT 1 FROM task_versions WHERE name = $1 LIMIT 1",
      [name],
    );
    return rows.length > 0;
  }

  async addEvaluation(name: string, version: number, evaluation: TaskEvaluation): Promise<void> {
    validateTaskName(name);
    validateVersion(version);
    const e = validateEvaluation(evaluation);
    try {
      // A replaced evaluation goes to the end, as a new one would.
      await this.#db.query(
        `INSERT INTO task_evaluations (name, version, id, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name, version, id)
         DO UPDATE SET body = EXCLUDED.body, seq = nextval('task_evaluations_seq_seq')`,
        [name, version, e.id, JSON.stringify(e)],
      );
    } catch (err) {
      // 23503 foreign_key_violation: the version is not there.
      if ((err as { code?: string }).code === "23503") {
        throw new TaskNotFoundError(`task "${name}" has no version ${version}`);
      }
      throw err;
    }
  }

  async evaluations(name: string, version: number): Promise<TaskEvaluation[]> {
    validateTaskName(name);
    validateVersion(version);
    const { rows } = await this.#db.query<{ body: TaskEvaluation; found: boolean }>(
      `SELECT e.body, true AS found FROM task_evaluations e
       WHERE e.name = $1 AND e.version = $2 ORDER BY e.seq`,
      [name, version],
    );
    if (rows.length === 0) {
      const exists = await this.#db.query(
        "SELECT 1 FROM task_versions WHERE name = $1 AND version = $2",
        [name, version],
      );
      if (exists.rows.length === 0) {
        throw new TaskNotFoundError(`task "${name}" has no version ${version}`);
      }
    }
    return rows.map((r) => r.body);
  }

  async deleteVersion(name: string, version: number): Promise<void> {
    validateTaskName(name);
    validateVersion(version);
    await this.#db.tx(async (c) => {
      const { rowCount } = await c.query(
        "DELETE FROM task_versions WHERE name = $1 AND version = $2",
        [name, version],
      );
      if (!rowCount) throw new TaskNotFoundError(`task "${name}" has no version ${version}`);
      await notify(c, name);
    });
    this.#invalidate(name);
  }

  async delete(name: string): Promise<void> {
    validateTaskName(name);
    await this.#db.tx(async (c) => {
      const { rowCount } = await c.query("DELETE FROM task_versions WHERE name = $1", [name]);
      if (!rowCount) throw new TaskNotFoundError(`task "${name}" does not exist`);
      await notify(c, name);
    });
    this.#invalidate(name);
  }
}

/**
 * The version of `name` put with `req`'s id, answered as a retry (its number, or already_exists
 * for another request); null when there is none.
 */
async function findRequest(q: Queryable, name: string, req: PutRequest): Promise<number | null> {
  const { rows } = await q.query<{ version: number; request_digest: string | null }>(
    "SELECT version, request_digest FROM task_versions WHERE name = $1 AND request_id = $2",
    [name, req.id],
  );
  if (rows.length === 0) return null;
  return answerRetry(name, req, { version: rows[0].version, digest: rows[0].request_digest ?? "" });
}

/** Whether `e` is the unique violation of (name, request_id): another writer holds the id. */
function isRequestIdTaken(e: unknown): boolean {
  const err = e as { code?: unknown; constraint?: unknown };
  return err?.code === "23505" && err.constraint === "task_versions_request_id";
}

/** Tells every replica (this one included) that `name` changed, on commit. */
async function notify(c: Queryable, name: string): Promise<void> {
  await c.query("SELECT pg_notify($1, $2)", [REGISTRY_CHANNEL, name]);
}
