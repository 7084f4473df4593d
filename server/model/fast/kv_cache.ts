/**
 * Per-sequence key/value store of the fast engine: for every layer a K and a V block of
 * [capacity, C] float32 rows, grown by doubling so appending one token at a time stays amortised
 * O(1) per row.
 */
import type { KvCache } from "../engine.ts";

export class FastKvCache implements KvCache {
  #length = 0;
  #capacity = 0;
  #k: Float32Array[] = [];
  #v: Float32Array[] = [];
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

  /** [capacity, C] keys of `layer` (rows 0..length hold data). */
  keys(layer: number): Float32Array {
    return this.#k[layer];
  }

  /** [capacity, C] values of `layer`. */
  values(layer: number): Float32Array {
    return this.#v[layer];
  }

  /** Makes room for `rows` more rows in every layer (doubling; existing rows are kept). */
  reserve(rows: number): void {
    if (this.#disposed) throw new Error("KvCache was disposed: it cannot be used again");
    const need = this.#length + rows;
    if (need <= this.#capacity) return;
    let cap = Math.max(16, this.#capacity);
    while (cap < need) cap *= 2;
    const C = this.nEmbd;
    for (let l = 0; l < this.nLayer; l++) {
      const k = new Float32Array(cap * C); // [cap, C]
      const v = new Float32Array(cap * C); // [cap, C]
      if (this.#length > 0) {
        k.set(this.#k[l].subarray(0, this.#length * C));
        v.set(this.#v[l].subarray(0, this.#length * C));
      }
      this.#k[l] = k;
      this.#v[l] = v;
    }
    this.#capacity = cap;
  }

  /** Marks `rows` appended rows as stored (after every layer has written them). */
  commit(rows: number): void {
    this.#length += rows;
  }

  dispose(): void {
    this.#disposed = true;
    this.#k = [];
    this.#v = [];
    this.#capacity = 0;
    this.#length = 0;
  }
}
