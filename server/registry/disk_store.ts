/**
 * The embedded TaskStore: one directory on local disk.
 *
 * Layout (the version number is the directory name; the latest is the highest present):
 * ```
 * <root>/<name>/v<N>/meta.json            template, fingerprint, metrics, checksums
 * <root>/<name>/v<N>/table.safetensors    "table" F32 [total_virtual_tokens, hidden]
 * <root>/<name>/v<N>/encoder.safetensors  p-tuning encoder tensors (when present)
 * <root>/.tmp/<pid>.<uuid>.<host>/        versions being written
 * <root>/.trash/<pid>.<uuid>.<host>/      tasks being deleted
 * ```
 * A version is written in full under `.tmp/`, fsynced, then renamed to `<name>/v<N>`. rename(2)
 * refuses a non-empty target, so two writers racing for the same N cannot both win: the loser
 * rescans and takes N+1. There is no pointer file to update (and so none to tear); readers see a
 * version completely or not at all, and a writer killed at any point leaves only scratch under
 * `.tmp/`, which readers never look at and `open()` removes once its writer's pid is gone.
 * A put's request id is kept in its meta.json; the rename is the commit point, where a put whose
 * caller's signal aborted stops and a put whose id another writer committed first gives way.
 */
import { join, relative } from "node:path";
import { encodeSafetensors, parseSafetensors, readFloat32 } from "../model/safetensors.ts";
import { versionChecksum } from "./checksum.ts";
import { copyEncoder, validateDraft } from "./_draft.ts";
import { TaskCorruptError, TaskNotFoundError } from "./errors.ts";
import { checkFingerprint } from "./fingerprint.ts";
import { syncDir, writeFileDurable } from "../util/durable_fs.ts";
import { isStaleScratch, isTargetTaken, scratchName } from "./_fs.ts";
import { ByteLru } from "./_lru.ts";
import { decodeMeta, encodeMeta, META_FORMAT, type MetaFile } from "./_meta_file.ts";
import { isTaskName, validateTaskName, validateVersion } from "./names.ts";
import { compareKeys, LIST_PAGE, pageOfSorted, parsePageRequest } from "../util/paging.ts";
import { alreadyExists, diskFull, writingTo } from "../errors.ts";
import { validateEvaluation } from "./_evaluation.ts";
import { answerRetry, checkNotAborted, type PutRequest, requestOf } from "./_request.ts";
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

/** Progress of a `put()`, reported to `onWrite` (a seam for crash tests). */
export type WriteEvent =
  | { stage: "chunk"; file: string; written: number; total: number }
  | { stage: "written"; dir: string };

export interface DiskTaskStoreOptions {
  /** The served model; versions tuned on another are refused by get() and put(). Default: no check. */
  fingerprint?: ModelFingerprint;
  /** Bytes of decoded tables kept in memory across get() calls. Default: 256 MiB. */
  cacheBytes?: number;
  /** Clock for `createdAt`. Default: `() => new Date()`. */
  now?: () => Date;
  /** Called as a put() progresses; awaited, so a test can hold a writer at a given point. */
  onWrite?: (event: WriteEvent) => void | Promise<void>;
}

const TMP = ".tmp";
/** How a full registry disk is named to the user: the settings, never the path. */
const REGISTRY_STORAGE = "the registry's disk (REGISTRY_DIR; for the commands --registry)";
const TRASH = ".trash";
const META = "meta.json";
const TABLE = "table.safetensors";
const ENCODER = "encoder.safetensors";
/**
 * A version's evaluations (JSON list). The one file of a version written after it is in place:
 * replaced whole (aside, fsynced, renamed over), so it is either the old list or the new.
 */
const EVALUATIONS = "evaluations.json";
/** Commit attempts before giving up; each failure means another writer took that number. */
const MAX_COMMIT_ATTEMPTS = 10_000;

interface Cached {
  uid: string;
  table: Float32Array;
  encoderState?: EncoderState;
}

function metaToVersionMeta(m: MetaFile, version: number): TaskVersionMeta {
  return {
    name: m.name,
    version,
    template: m.template,
    totalVirtualTokens: m.totalVirtualTokens,
    hiddenSize: m.hiddenSize,
    fingerprint: m.fingerprint,
    metrics: m.metrics,
    createdAt: m.createdAt,
    source: m.source,
    checksum: m.checksum,
    ...(m.encoder ? { encoderKind: m.encoder.kind } : {}),
  };
}

function cachedBytes(c: Cached): number {
  const tensors = Object.values(c.encoderState?.tensors ?? {});
  return tensors.reduce((n, t) => n + t.data.byteLength, c.table.byteLength);
}

/** Parsed metadata kept for this many versions (a few MB); beyond it the cache starts over. */
const META_CACHE_ENTRIES = 10_000;

/** device:inode:mtime of a directory, or null where the platform does not say. */
async function dirIdentity(dir: string): Promise<string | null> {
  try {
    const st = await Deno.stat(dir);
    if (st.ino === null || st.dev === null) return null;
    return `${st.dev}:${st.ino}:${st.mtime?.getTime() ?? ""}`;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

async function readIfExists(path: string): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

export class DiskTaskStore implements TaskStore {
  readonly root: string;
  readonly #fingerprint?: ModelFingerprint;
  readonly #now: () => Date;
  readonly #onWrite?: DiskTaskStoreOptions["onWrite"];
  readonly #cache: ByteLru<Cached>;
  readonly #metaCache = new Map<string, { id: string; meta: MetaFile }>();
  readonly #evaluationWrites = new Map<string, Promise<void>>();

  private constructor(root: string, options: DiskTaskStoreOptions) {
    this.root = root;
    this.#fingerprint = options.fingerprint;
    this.#now = options.now ?? (() => new Date());
    this.#onWrite = options.onWrite;
    this.#cache = new ByteLru(options.cacheBytes ?? 256 * 2 ** 20);
  }

  /**
   * Opens (creating if needed) the store at `root`. Cost does not grow with the number of tasks:
   * only scratch left by dead writers is looked at.
   */
  static async open(root: string, options: DiskTaskStoreOptions = {}): Promise<DiskTaskStore> {
    if (typeof root !== "string" || root === "") {
      throw new TypeError(`root must be a non-empty path: found ${JSON.stringify(root)}`);
    }
    const cacheBytes = options.cacheBytes;
    if (cacheBytes !== undefined && (!Number.isSafeInteger(cacheBytes) || cacheBytes < 0)) {
      throw new RangeError(
        `cacheBytes must be a non-negative integer: found ${JSON.stringify(cacheBytes)}`,
      );
    }
    await Deno.mkdir(join(root, TMP), { recursive: true });
    await Deno.mkdir(join(root, TRASH), { recursive: true });
    const store = new DiskTaskStore(root, options);
    await store.#removeStaleScratch();
    return store;
  }

  async #removeStaleScratch(): Promise<void> {
    for (const sub of [TMP, TRASH]) {
      for await (const entry of Deno.readDir(join(this.root, sub))) {
        if (!isStaleScratch(entry.name)) continue;
        try {
          await Deno.remove(join(this.root, sub, entry.name), { recursive: true });
        } catch (e) {
          // Another process opening the store may be removing the same leftover.
          if (!(e instanceof Deno.errors.NotFound)) throw e;
        }
      }
    }
  }

  /** Version numbers present for `name`, ascending ([] when the task does not exist). */
  async #scan(name: string): Promise<number[]> {
    const out: number[] = [];
    try {
      for await (const entry of Deno.readDir(join(this.root, name))) {
        const m = /^v([1-9][0-9]{0,14})$/.exec(entry.name);
        if (m && entry.isDirectory) out.push(Number(m[1]));
      }
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    return out.sort((a, b) => a - b);
  }

  /** Resolves `version` (latest when omitted) and reads its metadata. */
  async #meta(name: string, version?: number): Promise<{ meta: MetaFile; version: number }> {
    validateTaskName(name);
    if (version !== undefined) validateVersion(version);
    const versions = await this.#scan(name);
    if (versions.length === 0) throw new TaskNotFoundError(`task "${name}" does not exist`);
    const v = version ?? versions[versions.length - 1];
    if (!versions.includes(v)) {
      throw new TaskNotFoundError(
        `task "${name}" has no version ${v}: it has ${versions.join(", ")}`,
      );
    }
    const meta = await this.#readMeta(name, v);
    if (this.#fingerprint) {
      checkFingerprint(this.#fingerprint, meta.fingerprint, `task "${name}" v${v}`);
    }
    return { meta, version: v };
  }

  /** The metadata of `name` v`v` (not checked against the served model). */
  async #readMeta(name: string, v: number): Promise<MetaFile> {
    const dir = join(this.root, name, `v${v}`);
    // A version is immutable once renamed into place, so its parsed metadata is kept, keyed by
    // the directory's identity: a task deleted and re-created under the same number is another
    // directory (another inode), never mistaken for the old one.
    const id = await dirIdentity(dir);
    const key = `${name}/v${v}`;
    const hit = id && this.#metaCache.get(key);
    if (hit && hit.id === id) return hit.meta;
    const bytes = await readIfExists(join(dir, META));
    if (bytes === null) {
      // Gone with its directory means deleted meanwhile; a directory without meta is damage.
      if ((await this.#scan(name)).includes(v)) {
        throw new TaskCorruptError(
          `${this.#shown(join(dir, META))}: missing; refusing to use task "${name}" v${v}`,
        );
      }
      throw new TaskNotFoundError(`task "${name}" v${v} was deleted`);
    }
    const meta = decodeMeta(bytes, this.#shown(join(dir, META)), name);
    if (id) {
      if (this.#metaCache.size >= META_CACHE_ENTRIES) this.#metaCache.clear();
      this.#metaCache.set(key, { id, meta });
    }
    return meta;
  }

  /**
   * The version among `versions` that was put with `req`'s id, answered as a retry (its number,
   * or already_exists for another request); null when none was. A version deleted meanwhile or
   * whose metadata is damaged cannot vouch for an id and is passed over.
   */
  async #findRequest(name: string, versions: number[], req: PutRequest): Promise<number | null> {
    for (const v of versions.toReversed()) {
      let meta: MetaFile;
      try {
        meta = await this.#readMeta(name, v);
      } catch (e) {
        if (e instanceof TaskNotFoundError || e instanceof TaskCorruptError) continue;
        throw e;
      }
      if (meta.requestId === req.id) {
        return answerRetry(name, req, { version: v, digest: meta.requestDigest ?? "" });
      }
    }
    return null;
  }

  async describe(name: string, version?: number): Promise<TaskVersionMeta> {
    const { meta, version: v } = await this.#meta(name, version);
    return metaToVersionMeta(meta, v);
  }

  async get(name: string, version?: number): Promise<TaskVersion> {
    const { meta, version: v } = await this.#meta(name, version);
    const key = `${name}/${v}`;
    let cached = this.#cache.get(key);
    if (!cached || cached.uid !== meta.uid) {
      cached = await this.#readTensors(meta, join(this.root, name, `v${v}`), v);
      this.#cache.set(key, cached, cachedBytes(cached));
    }
    return {
      ...structuredClone(metaToVersionMeta(meta, v)),
      table: cached.table.slice(),
      encoderState: copyEncoder(cached.encoderState),
    };
  }

  /**
   * A stored file as messages name it: relative to the registry, which callers may read about,
   * never the server's own path to it.
   */
  #shown(path: string): string {
    return `registry/${relative(this.root, path)}`;
  }

  async #readTensors(meta: MetaFile, dir: string, version: number): Promise<Cached> {
    const what = `task "${meta.name}" v${version}`;
    const read = async (file: string) => {
      const path = join(dir, file);
      const bytes = await readIfExists(path);
      if (bytes === null) {
        if ((await this.#scan(meta.name)).includes(version)) {
          throw new TaskCorruptError(`${this.#shown(path)}: missing; refusing to use ${what}`);
        }
        throw new TaskNotFoundError(`${what} was deleted`);
      }
      try {
        return parseSafetensors(bytes, this.#shown(path));
      } catch (e) {
        throw new TaskCorruptError(`${(e as Error).message}; refusing to use ${what}`, {
          cause: e,
        });
      }
    };
    const tf = await read(TABLE);
    const info = tf.tensors.get("table");
    const shape = [meta.totalVirtualTokens, meta.hiddenSize];
    if (!info || info.dtype !== "F32" || JSON.stringify(info.shape) !== JSON.stringify(shape)) {
      throw new TaskCorruptError(
        `${tf.file}: tensor "table" must be F32 ${JSON.stringify(shape)}: found ${
          info ? `${info.dtype} ${JSON.stringify(info.shape)}` : "none"
        }; refusing to use ${what}`,
      );
    }
    const table = readFloat32(tf, "table");
    let encoderState: EncoderState | undefined;
    if (meta.encoder) {
      const ef = await read(ENCODER);
      const tensors: EncoderState["tensors"] = {};
      for (const name of meta.encoder.tensors) {
        const t = ef.tensors.get(name);
        if (!t || t.dtype !== "F32") {
          throw new TaskCorruptError(
            `${ef.file}: no F32 tensor "${name}"; refusing to use ${what}`,
          );
        }
        tensors[name] = { shape: t.shape, data: readFloat32(ef, name) };
      }
      encoderState = { kind: meta.encoder.kind, config: meta.encoder.config, tensors };
    }
    const sum = versionChecksum(table, encoderState);
    if (sum !== meta.checksum) {
      throw new TaskCorruptError(
        `${what}: stored tensors in ${
          this.#shown(dir)
        } fail their checksum (meta.json says ${meta.checksum}, ` +
          `the bytes give ${sum}); refusing to use it`,
      );
    }
    return { uid: meta.uid, table, encoderState };
  }

  async put(name: string, draft: TaskDraft, options: PutOptions = {}): Promise<TaskVersion> {
    validateTaskName(name);
    const d = validateDraft(name, draft, this.#fingerprint);
    const req = requestOf(options);
    if (req) {
      // A retry answered before any bytes are written; #commit asks again at each attempt.
      const earlier = await this.#findRequest(name, await this.#scan(name), req);
      if (earlier !== null) return await this.get(name, earlier);
    }
    checkNotAborted(options.signal, name);
    const meta: MetaFile = {
      format: META_FORMAT,
      uid: crypto.randomUUID(),
      name,
      template: d.template,
      totalVirtualTokens: d.totalVirtualTokens,
      hiddenSize: d.hiddenSize,
      fingerprint: d.fingerprint,
      metrics: d.metrics,
      createdAt: this.#now().toISOString(),
      source: d.source,
      checksum: versionChecksum(d.table, d.encoderState),
      encoder: d.encoderState
        ? {
          kind: d.encoderState.kind,
          config: d.encoderState.config,
          tensors: Object.keys(d.encoderState.tensors).sort(),
        }
        : null,
      ...(req ? { requestId: req.id, requestDigest: req.digest } : {}),
    };
    const tmp = join(this.root, TMP, scratchName());
    await writingTo(REGISTRY_STORAGE, () => Deno.mkdir(tmp));
    let committed: { version: number; written: boolean };
    try {
      await this.#write(
        tmp,
        TABLE,
        encodeSafetensors({
          table: { dtype: "F32", shape: [d.totalVirtualTokens, d.hiddenSize], data: d.table },
        }),
      );
      if (d.encoderState) {
        const tensors = Object.fromEntries(
          Object.entries(d.encoderState.tensors).map((
            [k, t],
          ) => [k, { dtype: "F32" as const, shape: t.shape, data: t.data }]),
        );
        await this.#write(tmp, ENCODER, encodeSafetensors(tensors));
      }
      // meta.json last: a version directory with meta.json was written completely.
      await this.#write(tmp, META, encodeMeta(meta));
      await syncDir(tmp);
      await this.#onWrite?.({ stage: "written", dir: tmp });
      committed = await this.#commit(name, tmp, options, req);
    } catch (e) {
      // The scratch is worthless now; failing to remove it is harmless (open() retries).
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
      throw diskFull(e, REGISTRY_STORAGE);
    }
    const { version } = committed;
    if (!committed.written) {
      // Another put with this request id committed first: its version is the answer.
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
      return await this.get(name, version);
    }
    const cached = { uid: meta.uid, table: d.table, encoderState: d.encoderState };
    this.#cache.set(`${name}/${version}`, cached, cachedBytes(cached));
    return {
      ...structuredClone(metaToVersionMeta(meta, version)),
      table: d.table.slice(),
      encoderState: copyEncoder(d.encoderState),
    };
  }

  async #write(dir: string, file: string, bytes: Uint8Array): Promise<void> {
    const path = join(dir, file);
    const hook = this.#onWrite;
    await writeFileDurable(
      path,
      bytes,
      hook && ((written) => hook({ stage: "chunk", file, written, total: bytes.length })),
    );
  }

  /**
   * Renames the written version into place as the next number. rename(2) refuses a taken
   * target, so of two writers one wins each number; a create-only writer takes v1 or nothing.
   *
   * A put with a request id looks for it among the versions of each attempt's scan, and renames
   * to the number after that same scan. Two writers of one id that both saw none race for one
   * number: the loser rescans and finds the winner's id (`written: false`). The caller's signal is
   * checked right before the rename: the rename is the commit point.
   */
  async #commit(
    name: string,
    tmp: string,
    options: PutOptions,
    req: PutRequest | null,
  ): Promise<{ version: number; written: boolean }> {
    const taskDir = join(this.root, name);
    for (let attempt = 0; attempt < MAX_COMMIT_ATTEMPTS; attempt++) {
      try {
        await Deno.mkdir(taskDir);
        await syncDir(this.root);
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      }
      const versions = await this.#scan(name);
      if (req) {
        const earlier = await this.#findRequest(name, versions, req);
        if (earlier !== null) return { version: earlier, written: false };
      }
      if (options.createOnly && versions.length > 0) {
        throw alreadyExists(`name: task "${name}" already exists (create_only)`);
      }
      const next = (versions.at(-1) ?? 0) + 1;
      checkNotAborted(options.signal, name);
      try {
        await Deno.rename(tmp, join(taskDir, `v${next}`));
      } catch (e) {
        // Another writer took `next` (a create-only writer then finds the task exists, a writer
        // of the same request id finds its version), or a delete moved the task directory away:
        // try again.
        if (isTargetTaken(e) || e instanceof Deno.errors.NotFound) continue;
        throw e;
      }
      await syncDir(taskDir);
      return { version: next, written: true };
    }
    throw new Error(
      `task "${name}": no free version number after ${MAX_COMMIT_ATTEMPTS} attempts`,
    );
  }

  async list(options?: ListOptions): Promise<TaskPage> {
    const { pageSize, after } = parsePageRequest(options ?? {}, LIST_PAGE, isTaskName);
    const names: string[] = [];
    for await (const entry of Deno.readDir(this.root)) {
      if (entry.isDirectory && isTaskName(entry.name)) names.push(entry.name);
    }
    names.sort(compareKeys);
    const page = pageOfSorted(names, pageSize, after);
    const tasks = await Promise.all(page.keys.map((name) => this.#summary(name)));
    return {
      tasks: tasks.filter((t): t is TaskSummary => t !== null),
      nextPageToken: page.nextPageToken,
    };
  }

  /** A listing entry, or null for a task directory without versions (deleted or never filled). */
  async #summary(name: string): Promise<TaskSummary | null> {
    const versions = await this.#scan(name);
    if (versions.length === 0) return null;
    const latestVersion = versions[versions.length - 1];
    const base = { name, latestVersion, versionCount: versions.length };
    const file = join(this.root, name, `v${latestVersion}`, META);
    try {
      const bytes = await readIfExists(file);
      if (bytes === null) return null;
      const meta = decodeMeta(bytes, this.#shown(file), name);
      return { ...base, latest: metaToVersionMeta(meta, latestVersion) };
    } catch (e) {
      // One damaged task must not hide the others from a listing; it is reported in place.
      if (e instanceof TaskCorruptError) return { ...base, latest: null, problem: e.message };
      throw e;
    }
  }

  async versions(name: string): Promise<number[]> {
    validateTaskName(name);
    const versions = await this.#scan(name);
    if (versions.length === 0) throw new TaskNotFoundError(`task "${name}" does not exist`);
    return versions;
  }

  async has(name: string): Promise<boolean> {
    validateTaskName(name);
    return (await this.#scan(name)).length > 0;
  }

  async deleteVersion(name: string, version: number): Promise<void> {
    validateTaskName(name);
    validateVersion(version);
    const trash = join(this.root, TRASH, scratchName());
    try {
      await Deno.rename(join(this.root, name, `v${version}`), trash);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new TaskNotFoundError(`task "${name}" has no version ${version}`);
      }
      throw e;
    }
    await syncDir(join(this.root, name));
    this.#cache.delete(`${name}/${version}`);
    await Deno.remove(trash, { recursive: true });
  }

  async addEvaluation(name: string, version: number, evaluation: TaskEvaluation): Promise<void> {
    const e = validateEvaluation(evaluation);
    const dir = await this.#versionDir(name, version);
    // One read-modify-write at a time per version in this process (the store's only writer).
    const key = `${name}/v${version}`;
    const previous = this.#evaluationWrites.get(key) ?? Promise.resolve();
    const write = previous.catch(() => {}).then(() =>
      writingTo(REGISTRY_STORAGE, async () => {
        const list = (await this.#readEvaluations(dir)).filter((x) => x.id !== e.id);
        const tmp = join(dir, `.${scratchName()}.tmp`);
        await writeFileDurable(tmp, new TextEncoder().encode(JSON.stringify([...list, e])));
        await Deno.rename(tmp, join(dir, EVALUATIONS));
        await syncDir(dir);
      })
    );
    this.#evaluationWrites.set(key, write);
    try {
      await write;
    } finally {
      if (this.#evaluationWrites.get(key) === write) this.#evaluationWrites.delete(key);
    }
  }

  async evaluations(name: string, version: number): Promise<TaskEvaluation[]> {
    return await this.#readEvaluations(await this.#versionDir(name, version));
  }

  /** The directory of an existing version; not_found naming what exists otherwise. */
  async #versionDir(name: string, version: number): Promise<string> {
    validateTaskName(name);
    validateVersion(version);
    const versions = await this.#scan(name);
    if (!versions.includes(version)) {
      throw new TaskNotFoundError(`task "${name}" has no version ${version}`);
    }
    return join(this.root, name, `v${version}`);
  }

  async #readEvaluations(dir: string): Promise<TaskEvaluation[]> {
    const bytes = await readIfExists(join(dir, EVALUATIONS));
    if (bytes === null) return [];
    try {
      const list = JSON.parse(new TextDecoder().decode(bytes));
      if (!Array.isArray(list)) throw new SyntaxError("not a list");
      return list as TaskEvaluation[];
    } catch (e) {
      throw new TaskCorruptError(
        `${this.#shown(join(dir, EVALUATIONS))}: unreadable (${(e as Error).message})`,
      );
    }
  }

  async delete(name: string): Promise<void> {
    validateTaskName(name);
    const existed = (await this.#scan(name)).length > 0;
    const trash = join(this.root, TRASH, scratchName());
    try {
      // One rename takes every version out of sight at once; the slow removal happens unseen.
      await Deno.rename(join(this.root, name), trash);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new TaskNotFoundError(`task "${name}" does not exist`);
      }
      throw e;
    }
    await syncDir(this.root);
    this.#cache.deletePrefix(`${name}/`);
    await Deno.remove(trash, { recursive: true });
    if (!existed) throw new TaskNotFoundError(`task "${name}" does not exist`);
  }
}
