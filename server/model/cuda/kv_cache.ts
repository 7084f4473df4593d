/**
 * Per-sequence key/value store of the cuda engine, in GPU memory: one f32 device buffer
 * [L, 2, capacity, C] (per layer a K and a V block), grown by doubling with a device-to-device
 * copy, so appending one token at a time stays amortised O(1) per row. The same layout as
 * fast/kv_cache.ts, so the engine addresses both alike.
 */
import { checkForkRows, type KvCache } from "../engine.ts";
import type { Device, DeviceBuffer } from "./device.ts";

export class CudaKvCache implements KvCache {
  #length = 0;
  #capacity = 0;
  #data: DeviceBuffer | null = null; // [L, 2, capacity, C]
  #disposed = false;

  constructor(
    /** Identifies the engine that made it; another engine's cache is rejected. */
    readonly owner: object,
    readonly device: Device,
    readonly nLayer: number,
    readonly nEmbd: number,
  ) {}

  get length(): number {
    return this.#length;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** The whole store (after `reserve`). */
  get data(): DeviceBuffer {
    if (!this.#data) throw new Error("KvCache has no storage yet: reserve() first");
    return this.#data;
  }

  keyOffset(layer: number): number {
    return 2 * layer * this.#capacity * this.nEmbd;
  }

  valueOffset(layer: number): number {
    return (2 * layer + 1) * this.#capacity * this.nEmbd;
  }

  /** Makes room for `rows` more rows in every layer (doubling; existing rows are kept). */
  reserve(rows: number): void {
    if (this.#disposed) throw new Error("KvCache was disposed: it cannot be used again");
    const need = this.#length + rows;
    if (need <= this.#capacity && this.#data) return;
    let cap = Math.max(16, this.#capacity);
    while (cap < need) cap *= 2;
    const C = this.nEmbd, old = this.#data, oldCap = this.#capacity;
    const data = this.device.alloc("f32", 2 * this.nLayer * cap * C); // [L, 2, cap, C]
    if (old && this.#length > 0) {
      for (let block = 0; block < 2 * this.nLayer; block++) {
        this.device.copy(
          { buf: data, off: block * cap * C },
          { buf: old, off: block * oldCap * C },
          this.#length * C,
        );
      }
    }
    if (old) this.device.free(old);
    this.#data = data;
    this.#capacity = cap;
  }

  /** Marks `rows` appended rows as stored (after every layer has written them). */
  commit(rows: number): void {
    this.#length += rows;
  }

  /** A new cache of the same owner holding a copy of this one's first `rows` rows (on device). */
  fork(rows = this.#length): CudaKvCache {
    if (this.#disposed) throw new Error("KvCache was disposed: it cannot be used again");
    checkForkRows(rows, this.#length);
    const copy = new CudaKvCache(this.owner, this.device, this.nLayer, this.nEmbd);
    const n = rows, C = this.nEmbd;
    if (n === 0) return copy;
    copy.reserve(n);
    for (let block = 0; block < 2 * this.nLayer; block++) {
      this.device.copy(
        { buf: copy.data, off: block * copy.#capacity * C },
        { buf: this.data, off: block * this.#capacity * C },
        n * C,
      );
    }
    copy.commit(n);
    return copy;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#data) this.device.free(this.#data);
    this.#data = null;
    this.#capacity = 0;
    this.#length = 0;
  }
}
