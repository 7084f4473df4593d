/**
 * Tasks as a service: register a version from a template and a prompt table or from a PEFT
 * adapter, describe, list and delete. Every check of a registration lives here (or in the
 * template and draft validators it calls), once.
 */
import { invalidArgument, notFound, resourceExhausted } from "../errors.ts";
import { validateTemplate } from "../prompts/template.ts";
import type { TaskTemplate } from "../prompts/template_types.ts";
import type { Page, PageRequest } from "../util/paging.ts";
import { checkServableVirtualTokens, DEFAULT_MAX_VIRTUAL_TOKENS } from "./limits.ts";
import { validateTaskName } from "./names.ts";
import { parsePeftAdapter } from "./peft.ts";
import { parseRequestId, requestDigest } from "./request_digest.ts";
import type {
  ModelFingerprint,
  TaskDraft,
  TaskEvaluation,
  TaskStore,
  TaskVersionMeta,
} from "./types.ts";

/** A version's metadata and every version number its task has. */
export interface TaskInfo extends TaskVersionMeta {
  /** Ascending. */
  versions: number[];
  /** This version's evaluations, oldest first (GetTask; absent in listings). */
  evaluations?: TaskEvaluation[];
}

export type TableSource =
  /** [rows, hidden] row-major. */
  | { kind: "table"; rows: number; hidden: number; values: ArrayLike<number> }
  | { kind: "peft"; configJson: Uint8Array; safetensors: Uint8Array };

export interface RegisterTaskRequest {
  name: string;
  /** NeMo's template keys that were given; required with a table, optional with a PEFT adapter. */
  template?: Partial<TaskTemplate>;
  source: TableSource;
  /** Refuse with already_exists when the task exists. */
  createOnly?: boolean;
  /**
   * AIP-155: a UUID naming this call ("" or absent: none). A retry with the same id gets the
   * version the first call made and writes nothing; the id with another request is
   * already_exists.
   */
  requestId?: string;
}

export interface TaskServiceOptions {
  store: TaskStore;
  fingerprint: ModelFingerprint;
  /** The model's hidden size: a table's width. */
  hiddenSize: number;
  /** Floats in one registered table. Default 4M (16 MiB). */
  maxTableValues?: number;
  /** The most virtual tokens a served task may have: serving's limit. Default 128. */
  maxVirtualTokens?: number;
}

export class TaskService {
  readonly #opts: TaskServiceOptions;

  constructor(opts: TaskServiceOptions) {
    this.#opts = opts;
  }

  get store(): TaskStore {
    return this.#opts.store;
  }

  /**
   * Writes the next version of `req.name`, or answers a retry of the call with `req.requestId`
   * with the version it made. `signal` is the caller's: once it aborts, a write that has not
   * committed is abandoned (deadline_exceeded or cancelled) rather than landing unseen.
   */
  async register(req: RegisterTaskRequest, signal?: AbortSignal): Promise<TaskInfo> {
    const { store } = this.#opts;
    const requestId = parseRequestId(req.requestId, "request_id");
    const name = validateTaskName(req.name, "name");
    if (req.template?.taskname && req.template.taskname !== name) {
      throw invalidArgument(
        `template.taskname must equal name (${JSON.stringify(name)}) or be empty: found ${
          JSON.stringify(req.template.taskname)
        }`,
      );
    }
    const draft = req.source.kind === "peft"
      ? this.#peftDraft(name, req.template, req.source)
      : this.#tableDraft(name, req.template, req.source);
    checkServableVirtualTokens(
      `task ${name}`,
      draft.totalVirtualTokens,
      this.#opts.maxVirtualTokens ?? DEFAULT_MAX_VIRTUAL_TOKENS,
    );
    const v = await store.put(name, draft, {
      createOnly: req.createOnly,
      signal,
      ...(requestId ? { requestId, requestDigest: digestOf(name, req) } : {}),
    });
    return { ...stripTensors(v), versions: await store.versions(name) };
  }

  async describe(name: string, version?: number): Promise<TaskInfo> {
    const { store } = this.#opts;
    const meta = await store.describe(name, version);
    return {
      ...meta,
      versions: await store.versions(name),
      evaluations: await store.evaluations(name, meta.version),
    };
  }

  /** Tasks by name, each as its latest version. */
  async list(page: PageRequest = {}): Promise<Page<TaskInfo>> {
    const { store } = this.#opts;
    const p = await store.list(page);
    const items: TaskInfo[] = [];
    for (const s of p.tasks) {
      if (s.latest) items.push({ ...s.latest, versions: await store.versions(s.name) });
    }
    return { items, nextPageToken: p.nextPageToken };
  }

  /** Removes every version; returns their numbers. */
  async delete(name: string): Promise<{ name: string; versionsDeleted: number[] }> {
    const { store } = this.#opts;
    validateTaskName(name, "name");
    const versions = await store.versions(name);
    if (versions.length === 0) throw notFound(`name: no task "${name}"`);
    await store.delete(name);
    return { name, versionsDeleted: versions };
  }

  #tableDraft(
    name: string,
    template: Partial<TaskTemplate> | undefined,
    src: Extract<TableSource, { kind: "table" }>,
  ): TaskDraft {
    if (!template) throw invalidArgument("template is required with a table");
    const tpl = validateTemplate({ ...template, taskname: name }, "template");
    const { rows, hidden, values } = src;
    const max = this.#opts.maxTableValues ?? 4 << 20;
    if (values.length > max) {
      throw resourceExhausted(
        `table.values must hold at most ${max} values: found ${values.length}`,
        "max_table_values",
      );
    }
    if (rows !== tpl.total_virtual_tokens) {
      throw invalidArgument(
        `table.rows must equal template.total_virtual_tokens (${tpl.total_virtual_tokens}): found ${rows}`,
      );
    }
    if (hidden !== this.#opts.hiddenSize) {
      throw invalidArgument(
        `table.hidden must equal the model's hidden size (${this.#opts.hiddenSize}): found ${hidden}`,
      );
    }
    if (values.length !== rows * hidden) {
      throw invalidArgument(
        `table.values must hold rows x hidden = ${rows} x ${hidden} = ${
          rows * hidden
        } values: found ${values.length}`,
      );
    }
    return {
      template: tpl,
      totalVirtualTokens: rows,
      hiddenSize: hidden,
      table: Float32Array.from(values),
      fingerprint: this.#opts.fingerprint,
      source: "register",
    };
  }

  #peftDraft(
    name: string,
    template: Partial<TaskTemplate> | undefined,
    src: Extract<TableSource, { kind: "peft" }>,
  ): TaskDraft {
    if (src.configJson.length === 0) {
      throw invalidArgument("peft.adapter_config_json must not be empty");
    }
    if (src.safetensors.length === 0) {
      throw invalidArgument("peft.adapter_safetensors must not be empty");
    }
    let configJson: string;
    try {
      configJson = new TextDecoder("utf-8", { fatal: true }).decode(src.configJson);
    } catch {
      throw invalidArgument("peft.adapter_config_json must be UTF-8 JSON");
    }
    return parsePeftAdapter({
      configJson,
      safetensorsBytes: src.safetensors,
      where: "peft_adapter",
    }, { name, fingerprint: this.#opts.fingerprint, promptTemplate: template?.prompt_template });
  }
}

/**
 * What the call asks for, digested: a retry sends the same, so the same digest; anything else
 * reusing its request id differs here. The id itself is left out (it is the key, not the request).
 */
function digestOf(name: string, req: RegisterTaskRequest): string {
  return requestDigest({
    name,
    template: req.template ?? null,
    source: req.source,
    createOnly: req.createOnly ?? false,
  });
}

function stripTensors<T extends TaskVersionMeta & { table?: unknown; encoderState?: unknown }>(
  v: T,
): TaskVersionMeta {
  const { table: _t, encoderState: _e, ...meta } = v;
  return meta;
}
