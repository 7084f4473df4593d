/**
 * One safetensors file of a checkpoint, opened for loading weights with as little memory as the
 * engines allow (issue 12: peak while loading at most 1.2x the weights):
 *
 * - mapped (`mmap.ts`, where FFI is allowed): an F32 tensor whose bytes are 4-byte aligned in the
 *   file is returned as a Float32Array *view of the mapping*: no copy, no heap; its pages are the
 *   page cache's. Any other tensor (F16, BF16, a misaligned F32) is decoded into a new array and
 *   its mapped pages are dropped from this process once read.
 * - read (no FFI): the header is read alone, then each tensor is read and decoded in chunks of
 *   at most 16 MiB straight into its array; the file is never whole in memory.
 *
 * Decoded arrays live in SharedArrayBuffers so the engine worker shares them without a copy.
 * `matrix` keeps F16/BF16 tensors 16-bit (mapped views, or read into shared memory as stored):
 * the engines compute on them as they are (half.ts), so a 16-bit checkpoint takes its file size.
 */
import { invalidArgument } from "../errors.ts";
import type { HalfDtype, Matrix } from "./half.ts";
import { mapFile, release } from "./mmap.ts";
import {
  decodeInto,
  dtypeBytes,
  headerLength,
  parseSafetensors,
  parseSafetensorsHeader,
  type TensorInfo,
} from "./safetensors.ts";

const CHUNK = 16 << 20;

export interface TensorFile {
  readonly file: string;
  readonly tensors: Map<string, TensorInfo>;
  /** True when the file is memory-mapped (F32 tensors come back as views of it). */
  readonly mapped: boolean;
  /** The tensor as float32: a view of the mapping where possible, else a decoded copy. */
  float32(name: string): Float32Array;
  /** The tensor in its stored width: F16/BF16 as 16-bit bits (mapped where possible), else float32. */
  matrix(name: string): Matrix;
  /** Closes the file handle (the read path); mapped views stay valid. */
  close(): void;
}

/** Opens `path` mapped when this process can map files, else for reading. */
export function openTensorFile(path: string, opts: { map?: boolean } = {}): TensorFile {
  const bytes = opts.map === false ? null : mapFile(path);
  return bytes ? new MappedFile(path, bytes) : new ReadFile(path);
}

function infoOf(file: string, tensors: Map<string, TensorInfo>, name: string): TensorInfo {
  const info = tensors.get(name);
  if (!info) throw invalidArgument(`${file}: no tensor named "${name}"`);
  if (info.dtype === "BOOL" || info.dtype === "U8") {
    throw invalidArgument(`${file}: tensor "${name}" is ${info.dtype}: not a number tensor`);
  }
  return info;
}

function sharedFloat32(n: number): Float32Array {
  return new Float32Array(new SharedArrayBuffer(n * 4));
}

const HALF: Partial<Record<string, HalfDtype>> = { F16: "f16", BF16: "bf16" };

class MappedFile implements TensorFile {
  readonly tensors: Map<string, TensorInfo>;
  readonly mapped = true;
  readonly #data: Uint8Array;

  constructor(readonly file: string, bytes: Uint8Array) {
    const st = parseSafetensors(bytes, file);
    this.tensors = st.tensors;
    this.#data = st.data;
  }

  float32(name: string): Float32Array {
    const info = infoOf(this.file, this.tensors, name);
    const raw = this.#data.subarray(info.begin, info.end);
    const n = raw.length / dtypeBytes(info.dtype);
    // The mapping starts page-aligned, so a byte offset in it is the offset in the file.
    if (info.dtype === "F32" && raw.byteOffset % 4 === 0) {
      return new Float32Array(raw.buffer, raw.byteOffset, n);
    }
    const out = sharedFloat32(n);
    // Chunk by chunk, dropping each chunk's pages once decoded: the stored bytes never add more
    // than a chunk to the peak.
    const size = dtypeBytes(info.dtype), step = Math.floor(CHUNK / size) * size;
    for (let at = 0; at < raw.length; at += step) {
      const chunk = raw.subarray(at, at + step);
      decodeInto(info.dtype, chunk, out, at / size);
      release(chunk);
    }
    return out;
  }

  matrix(name: string): Matrix {
    const info = infoOf(this.file, this.tensors, name);
    const dtype = HALF[info.dtype];
    const raw = this.#data.subarray(info.begin, info.end);
    if (!dtype) return this.float32(name);
    if (raw.byteOffset % 2 === 0) {
      return { dtype, bits: new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2) };
    }
    // Misaligned in the file (a foreign writer): copied, still 16-bit.
    const bits = new Uint16Array(new SharedArrayBuffer(raw.length));
    new Uint8Array(bits.buffer).set(raw);
    release(raw);
    return { dtype, bits };
  }

  close(): void {}
}

class ReadFile implements TensorFile {
  readonly tensors: Map<string, TensorInfo>;
  readonly mapped = false;
  readonly #f: Deno.FsFile;
  readonly #dataStart: number;
  #scratch: Uint8Array | undefined;

  constructor(readonly file: string) {
    this.#f = Deno.openSync(file, { read: true });
    try {
      const size = this.#f.statSync().size;
      const first8 = this.#readAt(0, new Uint8Array(Math.min(8, size)));
      const head = new Uint8Array(8 + headerLength(first8, size, file));
      this.#readAt(0, head);
      const h = parseSafetensorsHeader(head, size, file);
      this.tensors = h.tensors;
      this.#dataStart = h.dataStart;
    } catch (e) {
      this.#f.close();
      throw e;
    }
  }

  float32(name: string): Float32Array {
    const info = infoOf(this.file, this.tensors, name);
    const size = dtypeBytes(info.dtype);
    const out = sharedFloat32((info.end - info.begin) / size);
    const step = Math.floor(CHUNK / size) * size;
    // One scratch buffer per file: garbage per tensor would count in the peak until collected.
    this.#scratch ??= new Uint8Array(CHUNK);
    const scratch = this.#scratch;
    for (let at = info.begin; at < info.end; at += step) {
      const chunk = scratch.subarray(0, Math.min(step, info.end - at));
      this.#readAt(this.#dataStart + at, chunk);
      decodeInto(info.dtype, chunk, out, (at - info.begin) / size);
    }
    return out;
  }

  matrix(name: string): Matrix {
    const info = infoOf(this.file, this.tensors, name);
    const dtype = HALF[info.dtype];
    if (!dtype) return this.float32(name);
    const bits = new Uint16Array(new SharedArrayBuffer(info.end - info.begin));
    const bytes = new Uint8Array(bits.buffer);
    for (let at = 0; at < bytes.length; at += CHUNK) {
      this.#readAt(this.#dataStart + info.begin + at, bytes.subarray(at, at + CHUNK));
    }
    return { dtype, bits };
  }

  close(): void {
    this.#f.close();
    this.#scratch = undefined;
  }

  #readAt(offset: number, into: Uint8Array): Uint8Array {
    this.#f.seekSync(offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < into.length) {
      const n = this.#f.readSync(into.subarray(got));
      if (n === null) {
        throw invalidArgument(`${this.file}: ends before byte ${offset + into.length}`);
      }
      got += n;
    }
    return into;
  }
}
