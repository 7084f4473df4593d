/** An in-process TaskStore for tests of the layers above; same checks and errors as the disk store. */
import { alreadyExists } from "../errors.ts";
import { versionChecksum } from "./checksum.ts";
import { copyEncoder, validateDraft } from "./_draft.ts";
import { TaskNotFoundError } from "./errors.ts";
import { checkFingerprint } from "./fingerprint.ts";
import { isTaskName, validateTaskName, validateVersion } from "./names.ts";
import { compareKeys, LIST_PAGE, pageOfSorted, parsePageRequest } from "../util/paging.ts";
import { answerRetry, checkNotAborted, type PutRequest, requestOf } from "./_request.ts";
import type {
  ListOptions,
  ModelFingerprint,
  PutOptions,
  TaskDraft,
  TaskEvaluation,
  TaskPage,
  TaskStore,
  TaskVersion,
  TaskVersionMeta,
} from "./types.ts";
import { validateEvaluation } from "./_evaluation.ts";

export interface MemoryTaskStoreOptions {
  /** The served model; versions tuned on another are refused. Default: no check. */
  fingerprint?: ModelFingerprint;
  /** Clock for `createdAt`. Default: `() => new Date()`. */
  now?: () => Date;
}

function metaOf(v: TaskVersion): TaskVersionMeta {
  const { table: _t, encoderState: _e, ...meta } = v;
  return structuredClone(meta);
}

function copyOf(v: TaskVersion): TaskVersion {
  return { ...metaOf(v), table: v.table.slice(), encoderState: copyEncoder(v.encoderState) };
}

export class MemoryTaskStore implements TaskStore {
  readonly #tasks = new Map<string, TaskVersion[]>();
  /** Each stored version's evaluations; they go with the version. */
  readonly #evaluations = new WeakMap<TaskVersion, TaskEvaluation[]>();
  /** The request each version was put with; it goes with the version. */
  readonly #requests = new WeakMap<TaskVersion, PutRequest>();
  readonly #fingerprint?: ModelFingerprint;
  readonly #now: () => Date;

  constructor(options: MemoryTaskStoreOptions = {}) {
    this.#fingerprint = options.fingerprint;
    this.#now = options.now ?? (() => new Date());
  }

  put(name: string, draft: TaskDraft, options: PutOptions = {}): Promise<TaskVersion> {
    return Promise.resolve().then(() => {
      validateTaskName(name);
      const d = validateDraft(name, draft, this.#fingerprint);
      const req = requestOf(options);
      const list = this.#tasks.get(name) ?? [];
      const earlier = req && list.find((x) => this.#requests.get(x)?.id === req.id);
      if (req && earlier) {
        answerRetry(name, req, {
          version: earlier.version,
          digest: this.#requests.get(earlier)!.digest,
        });
        return copyOf(earlier);
      }
      if (options.createOnly && list.length > 0) {
        throw alreadyExists(`name: task "${name}" already exists (create_only)`);
      }
      // The commit point: everything above ran in this same turn, so no other put interleaves.
      checkNotAborted(options.signal, name);
      const v: TaskVersion = {
        name,
        version: (list.at(-1)?.version ?? 0) + 1,
        template: d.template,
        totalVirtualTokens: d.totalVirtualTokens,
        hiddenSize: d.hiddenSize,
        fingerprint: d.fingerprint,
        metrics: d.metrics,
        createdAt: this.#now().toISOString(),
        source: d.source,
        checksum: versionChecksum(d.table, d.encoderState),
        ...(d.encoderState ? { encoderKind: d.encoderState.kind } : {}),
        table: d.table,
        encoderState: d.encoderState,
      };
      list.push(v);
      if (req) this.#requests.set(v, req);
      this.#tasks.set(name, list);
      return copyOf(v);
    });
  }

  #find(name: string, version?: number): TaskVersion {
    validateTaskName(name);
    if (version !== undefined) validateVersion(version);
    const list = this.#tasks.get(name);
    if (!list) throw new TaskNotFoundError(`task "${name}" does not exist`);
    const v = version === undefined ? list.at(-1) : list.find((x) => x.version === version);
    if (!v) {
      throw new TaskNotFoundError(
        `task "${name}" has no version ${version}: it has ${list.map((x) => x.version).join(", ")}`,
      );
    }
    if (this.#fingerprint) {
      checkFingerprint(this.#fingerprint, v.fingerprint, `task "${name}" v${v.version}`);
    }
    return v;
  }

  get(name: string, version?: number): Promise<TaskVersion> {
    return Promise.resolve().then(() => copyOf(this.#find(name, version)));
  }

  describe(name: string, version?: number): Promise<TaskVersionMeta> {
    return Promise.resolve().then(() => metaOf(this.#find(name, version)));
  }

  list(options?: ListOptions): Promise<TaskPage> {
    return Promise.resolve().then(() => {
      const { pageSize, after } = parsePageRequest(options ?? {}, LIST_PAGE, isTaskName);
      const sorted = [...this.#tasks.keys()].sort(compareKeys);
      const page = pageOfSorted(sorted, pageSize, after);
      return {
        tasks: page.keys.map((name) => {
          const list = this.#tasks.get(name)!;
          const latest = list.at(-1)!;
          return {
            name,
            latestVersion: latest.version,
            versionCount: list.length,
            latest: metaOf(latest),
          };
        }),
        nextPageToken: page.nextPageToken,
      };
    });
  }

  versions(name: string): Promise<number[]> {
    return Promise.resolve().then(() => {
      validateTaskName(name);
      const list = this.#tasks.get(name);
      if (!list) throw new TaskNotFoundError(`task "${name}" does not exist`);
      return list.map((v) => v.version);
    });
  }

  deleteVersion(name: string, version: number): Promise<void> {
    return Promise.resolve().then(() => {
      validateTaskName(name);
      validateVersion(version);
      const list = this.#tasks.get(name) ?? [];
      const at = list.findIndex((v) => v.version === version);
      if (at < 0) throw new TaskNotFoundError(`task "${name}" has no version ${version}`);
      list.splice(at, 1);
      if (list.length === 0) this.#tasks.delete(name);
    });
  }

  delete(name: string): Promise<void> {
    return Promise.resolve().then(() => {
      validateTaskName(name);
      if (!this.#tasks.delete(name)) throw new TaskNotFoundError(`task "${name}" does not exist`);
    });
  }

  has(name: string): Promise<boolean> {
    return Promise.resolve().then(() => this.#tasks.has(validateTaskName(name)));
  }

  addEvaluation(name: string, version: number, evaluation: TaskEvaluation): Promise<void> {
    return Promise.resolve().then(() => {
      const e = validateEvaluation(evaluation);
      const v = this.#exact(name, version);
      const list = (this.#evaluations.get(v) ?? []).filter((x) => x.id !== e.id);
      this.#evaluations.set(v, [...list, e]);
    });
  }

  evaluations(name: string, version: number): Promise<TaskEvaluation[]> {
    return Promise.resolve().then(() =>
      structuredClone(this.#evaluations.get(this.#exact(name, version)) ?? [])
    );
  }

  /** The stored version itself (never handed out). */
  #exact(name: string, version: number): TaskVersion {
    validateTaskName(name);
    validateVersion(version);
    const v = this.#tasks.get(name)?.find((x) => x.version === version);
    if (!v) throw new TaskNotFoundError(`task "${name}" has no version ${version}`);
    return v;
  }
}
