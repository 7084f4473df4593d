/**
 * Grow-only scratch memory of one engine: each named buffer is reallocated only when a call needs
 * more than any earlier call did, so steady-state batches allocate nothing.
 */
export class Arena {
  readonly #buffers = new Map<string, Float32Array>();

  /** A buffer of at least n floats under `name`; contents are unspecified (not zeroed). */
  f32(name: string, n: number): Float32Array {
    const have = this.#buffers.get(name);
    if (have && have.length >= n) return have;
    // 25% headroom so slowly growing batch sizes do not reallocate every call.
    const buf = new Float32Array(Math.max(n, Math.ceil((have?.length ?? 0) * 1.25)));
    this.#buffers.set(name, buf);
    return buf;
  }

  /** Total floats held (for memory reports). */
  get size(): number {
    let n = 0;
    for (const b of this.#buffers.values()) n += b.length;
    return n;
  }

  clear(): void {
    this.#buffers.clear();
  }
}
