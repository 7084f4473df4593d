/**
 * Grow-only scratch memory of one cuda engine on its device, as fast/arena.ts on the host: each
 * named buffer is reallocated only when a call needs more than any earlier call did, so
 * steady-state batches allocate nothing (cudaMalloc and cudaFree synchronize the device).
 */
import type { Device, DeviceBuffer, DType } from "./device.ts";

export class DeviceArena {
  readonly #buffers = new Map<string, DeviceBuffer>();
  constructor(readonly device: Device) {}

  /** A buffer of at least n elements of `dtype` under `name`; contents are unspecified. */
  get(name: string, dtype: DType, n: number): DeviceBuffer {
    const have = this.#buffers.get(name);
    if (have && have.dtype === dtype && have.length >= n) return have;
    // 25% headroom so slowly growing batch sizes do not reallocate every call.
    const size = Math.max(n, Math.ceil((have?.length ?? 0) * 1.25), 1);
    if (have) this.device.free(have); // waits for queued work that reads it
    const buf = this.device.alloc(dtype, size);
    this.#buffers.set(name, buf);
    return buf;
  }

  f32(name: string, n: number): DeviceBuffer {
    return this.get(name, "f32", n);
  }

  /** An i32 buffer holding `values` (row indices, positions, targets) on the device. */
  ints(name: string, values: Int32Array): DeviceBuffer {
    const buf = this.get(name, "i32", values.length);
    this.device.upload({ buf, off: 0 }, values);
    return buf;
  }

  clear(): void {
    for (const b of this.#buffers.values()) this.device.free(b);
    this.#buffers.clear();
  }
}
