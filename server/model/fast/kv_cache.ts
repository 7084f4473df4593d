/**
 * Per-sequence key/value store of the fast engine: one float32 buffer [L, 2, capacity, C] (for
 * every layer a K and a V block), grown by doubling so appending one token at a time stays
 * amortised O(1) per row, with one allocation per growth.
 */
import { checkForkRows, type KvCache } from "../engine.ts";

export class FastKvCache implements KvCache {
  #length = 0;
  #capacity = 0;
  #data = new Float32Array(0); // [L, 2, capacity, C]
  #disposed = false;

  constructor(
    /** Identifies the engine that made it; another engine's cache is rejected. */
    readonly owner: object,
    readonly nLayer: number,
    readonly nEmbd: number,
  ) {}

  get length(): number {
    return this.#length;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** The whole store; address layer l's keys at `keyOffset(l)`, values at `valueOffset(l)`. */
  get data(): Float32Array {
    return this.#data;
  }

  /** Offset of layer l's [capacity, C] key rows in `data`. */
  keyOffset(layer: number): number {
    return 2 * layer * this.#capacity * this.nEmbd;
  }

  /** Offset of layer l's [capacity, C] value rows in `data`. */
  valueOffset(layer: number): number {
    return (2 * layer + 1) * this.#capacity * this.nEmbd;
  }

  /** Makes room for `rows` more rows in every layer (doubling; existing rows are kept). */
  reserve(rows: number): void {
    if (this.#disposed) throw new Error("KvCache was disposed: it cannot be used again");
    const need = this.#length + rows;
    if (need <= this.#capacity) return;
    let cap = Math.max(16, this.#capacity);
    while (cap < need) cap *= 2;
    const C = this.nEmbd, old = this.#data, oldCap = this.#capacity;
    const data = new Float32Array(2 * this.nLayer * cap * C); // [L, 2, cap, C]
    for (let block = 0; block < 2 * this.nLayer && this.#length > 0; block++) {
      const from = block * oldCap * C;
      data.set(old.subarray(from, from + this.#length * C), block * cap * C);
    }
    this.#data = data;
    this.#capacity = cap;
  }

  /** Marks `rows` appended rows as stored (after every layer has written them). */
  commit(rows: number): void {
    this.#length += rows;
  }

  /** A new cache of the same owner holding a copy of this one's first `rows` rows. */
  fork(rows = this.#length): FastKvCache {
    if (this.#disposed) throw new Error("KvCache was disposed: it cannot be used again");
    checkForkRows(rows, this.#length);
    const copy = new FastKvCache(this.owner, this.nLayer, this.nEmbd);
    const n = rows, C = this.nEmbd;
    if (n === 0) return copy;
    copy.reserve(n);
    for (let block = 0; block < 2 * this.nLayer; block++) {
      const from = block * this.#capacity * C;
      copy.#data.set(this.#data.subarray(from, from + n * C), block * copy.#capacity * C);
    }
    copy.commit(n);
    return copy;
  }

  dispose(): void {
    this.#disposed = true;
    this.#data = new Float32Array(0);
    this.#capacity = 0;
    this.#length = 0;
  }
}
