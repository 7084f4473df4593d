/**
 * Resident prompt tables in preallocated fixed slots (vLLM's adapter manager; TensorRT-LLM's prompt
 * table as extra vocabulary). One Float32Array [maxSlots * maxVirtualTokens, C] holds every
 * resident task's table; slot s owns rows [s * maxVirtualTokens, ...).
 *
 * Ids: a template's virtual token k is `vocabSize + k` (task-relative). A lease maps it to the
 * global id `vocabSize + offset(slot) + k`, so a batch mixing tasks of any virtual-token counts is
 * embedded by one gather over [wte; slot table] (`embedTokens`), with no loop per task.
 *
 * A task in use (leased by a waiting or running request) is never evicted; when a new task needs a
 * slot, the least recently used idle one is reused.
 */
import { checkServableVirtualTokens, DEFAULT_MAX_VIRTUAL_TOKENS } from "../registry/limits.ts";
import { invalidArgument, resourceExhausted } from "../errors.ts";
import { copyInto, type Matrix, matrixLength } from "../model/half.ts";

/** What the slots need of a registry task version (`TaskVersion` satisfies it). */
export interface ServableTable {
  name: string;
  version: number;
  totalVirtualTokens: number;
  /**
   * [totalVirtualTokens, C] row-major. Needed only when the task is not resident already
   * (`isResident()`), so a caller reads it from the registry on a miss only.
   */
  table?: Float32Array;
  /** Distinguishes a re-created task that reuses a version number. */
  checksum?: string;
}

/** Prompt tables resident at once, unless the service is told otherwise (PROMPT_SLOTS). */
export const DEFAULT_PROMPT_SLOTS = 64;

export interface PromptSlotsOptions {
  vocabSize: number;
  hidden: number;
  /** [vocabSize, hidden] frozen token embeddings (shared, never copied; may be 16-bit). */
  wte: Matrix;
  /** Tables resident at once. Default DEFAULT_PROMPT_SLOTS. */
  maxSlots?: number;
  /** Rows per slot: the largest virtual-token count served. Default DEFAULT_MAX_VIRTUAL_TOKENS. */
  maxVirtualTokens?: number;
}

export interface SlotLease {
  readonly name: string;
  readonly version: number;
  readonly slot: number;
  /**
   * Which load of a table this slot holds: a new number each time a table is loaded, so what is
   * cached for one occupant (its prompt prefix) is never served for the next.
   */
  readonly residency: number;
  /** First global row of this slot in the extended vocabulary is `vocabSize + offset`. */
  readonly offset: number;
  readonly virtualTokens: number;
  /** Task-relative ids (virtual k = vocabSize + k) -> global ids; throws on an unknown virtual id. */
  toGlobalIds(ids: ArrayLike<number>): Int32Array;
  /** Drops this lease's reference. Idempotent. */
  release(): void;
}

export interface PromptSlotsStats {
  capacity: number;
  resident: number;
  inUse: number;
  hits: number;
  loads: number;
  evictions: number;
}

interface SlotEntry {
  key: string;
  /** This load's number (SlotLease.residency). */
  residency: number;
  refs: number;
  /** Logical clock of the last acquire: lowest is evicted first. */
  lastUsed: number;
}

export class PromptSlots {
  readonly vocabSize: number;
  readonly hidden: number;
  readonly maxSlots: number;
  readonly maxVirtualTokens: number;
  readonly #wte: Matrix;
  readonly #table: Float32Array; // [maxSlots * maxVirtualTokens, C]
  readonly #slots: (SlotEntry | undefined)[];
  readonly #byKey = new Map<string, number>();
  #residencies = 0;
  readonly #evictListeners: ((residency: number) => void)[] = [];
  #clock = 0;
  #hits = 0;
  #loads = 0;
  #evictions = 0;

  constructor(opts: PromptSlotsOptions) {
    const maxSlots = opts.maxSlots ?? DEFAULT_PROMPT_SLOTS;
    const maxVirtual = opts.maxVirtualTokens ?? DEFAULT_MAX_VIRTUAL_TOKENS;
    for (const [field, v] of [["maxSlots", maxSlots], ["maxVirtualTokens", maxVirtual]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new RangeError(`PromptSlots: ${field} must be a positive integer: found ${v}`);
      }
    }
    if (matrixLength(opts.wte) !== opts.vocabSize * opts.hidden) {
      throw new RangeError(
        `PromptSlots: wte must hold vocabSize x hidden = ${
          opts.vocabSize * opts.hidden
        } values: found ${matrixLength(opts.wte)}`,
      );
    }
    this.vocabSize = opts.vocabSize;
    this.hidden = opts.hidden;
    this.maxSlots = maxSlots;
    this.maxVirtualTokens = maxVirtual;
    this.#wte = opts.wte;
    this.#table = new Float32Array(maxSlots * maxVirtual * opts.hidden);
    this.#slots = new Array(maxSlots).fill(undefined);
  }

  /** One past the largest valid global id. */
  get idLimit(): number {
    return this.vocabSize + this.maxSlots * this.maxVirtualTokens;
  }

  /**
   * Makes `task`'s table resident (loading it, evicting an idle slot if needed) and takes a
   * reference that keeps it so until `release()`.
   */
  acquire(task: ServableTable): SlotLease {
    const n = task.totalVirtualTokens;
    checkServableVirtualTokens(`task ${task.name} v${task.version}`, n, this.maxVirtualTokens);
    const key = `${task.name}@${task.version}#${task.checksum ?? ""}`;
    let slot = this.#byKey.get(key);
    if (slot === undefined) {
      const table = task.table;
      if (!table) {
        throw new Error(
          `PromptSlots.acquire: task ${task.name} v${task.version} is not resident and no table was given`,
        );
      }
      if (table.length !== n * this.hidden) {
        throw invalidArgument(
          `task ${task.name} v${task.version}: table must hold total_virtual_tokens x hidden = ${n} x ${this.hidden} = ${
            n * this.hidden
          } values: found ${table.length}`,
        );
      }
      slot = this.#freeSlot(task);
      this.#table.set(table, slot * this.maxVirtualTokens * this.hidden);
      this.#slots[slot] = { key, residency: ++this.#residencies, refs: 0, lastUsed: 0 };
      this.#byKey.set(key, slot);
      this.#loads++;
    } else {
      this.#hits++;
    }
    const entry = this.#slots[slot]!;
    entry.refs++;
    entry.lastUsed = ++this.#clock;
    return this.#lease(task, slot, entry);
  }

  /** Calls `fn` with a table's residency when its slot is given to another (what to forget). */
  onEvict(fn: (residency: number) => void): void {
    this.#evictListeners.push(fn);
  }

  isResident(task: ServableTable): boolean {
    return this.#byKey.has(`${task.name}@${task.version}#${task.checksum ?? ""}`);
  }

  stats(): PromptSlotsStats {
    let resident = 0, inUse = 0;
    for (const e of this.#slots) {
      if (!e) continue;
      resident++;
      if (e.refs > 0) inUse++;
    }
    return {
      capacity: this.maxSlots,
      resident,
      inUse,
      hits: this.#hits,
      loads: this.#loads,
      evictions: this.#evictions,
    };
  }

  /**
   * [ids.length, C] input embeddings for global ids: rows of wte for ids < vocabSize, rows of the
   * slot table above. One pass, whatever tasks the ids come from.
   */
  embedTokens(ids: ArrayLike<number>): Float32Array {
    const C = this.hidden, V = this.vocabSize, limit = this.idLimit;
    const out = new Float32Array(ids.length * C);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= limit) {
        throw new RangeError(`ids[${i}] must be an integer in [0, ${limit}): found ${id}`);
      }
      if (id < V) copyInto(this.#wte, id * C, C, out, i * C);
      else out.set(this.#table.subarray((id - V) * C, (id - V + 1) * C), i * C);
    }
    return out;
  }

  #freeSlot(task: ServableTable): number {
    let victim = -1;
    for (let s = 0; s < this.maxSlots; s++) {
      const e = this.#slots[s];
      if (!e) return s;
      if (e.refs === 0 && (victim < 0 || e.lastUsed < this.#slots[victim]!.lastUsed)) victim = s;
    }
    if (victim < 0) {
      throw resourceExhausted(
        `cannot load task ${task.name} v${task.version}: all ${this.maxSlots} prompt slots (max_prompt_slots) hold tasks in use by queued or running requests`,
        "max_prompt_slots",
      );
    }
    const gone = this.#slots[victim]!;
    this.#byKey.delete(gone.key);
    this.#slots[victim] = undefined;
    this.#evictions++;
    for (const fn of this.#evictListeners) fn(gone.residency);
    return victim;
  }

  #lease(task: ServableTable, slot: number, entry: SlotEntry): SlotLease {
    const V = this.vocabSize;
    const offset = slot * this.maxVirtualTokens;
    const count = task.totalVirtualTokens;
    let released = false;
    return {
      name: task.name,
      version: task.version,
      slot,
      residency: entry.residency,
      offset,
      virtualTokens: count,
      toGlobalIds(ids: ArrayLike<number>): Int32Array {
        const out = new Int32Array(ids.length);
        for (let i = 0; i < ids.length; i++) {
          const id = ids[i];
          if (id >= V) {
            const k = id - V;
            if (k >= count) {
              throw invalidArgument(
                `ids[${i}] is virtual token ${k} of task ${task.name} v${task.version}: the task has ${count} virtual tokens`,
              );
            }
            out[i] = V + offset + k;
          } else {
            out[i] = id;
          }
        }
        return out;
      },
      release(): void {
        if (released) return;
        released = true;
        entry.refs--;
      },
    };
  }
}
