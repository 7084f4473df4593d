/**
 * safetensors: an 8-byte little-endian header length, a JSON header of
 * `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the raw bytes.
 * Reading checks every claim the header makes against the bytes that are there.
 */
import { invalidArgument } from "../errors.ts";

/** BOOL and U8 are parsed (checkpoints store causal-mask buffers so) but never decoded. */
export type Dtype = "F32" | "F16" | "BF16" | "I32" | "I64" | "BOOL" | "U8";

export interface TensorInfo {
  dtype: Dtype;
  shape: number[];
  /** Byte range inside the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsFile {
  file: string;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** The data section (bytes after the header). */
  data: Uint8Array;
}

const BYTES: Record<Dtype, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, BOOL: 1, U8: 1 };

/** The header of a safetensors file: its tensors and where its data section starts. */
export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** Byte offset of the data section in the file (8 + the header's length). */
  dataStart: number;
}

/** The header length a file's first 8 bytes give, checked against the file's size. */
export function headerLength(first8: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8 || first8.length < 8) {
    throw invalidArgument(`${file}: too short for a safetensors header (${fileSize} bytes)`);
  }
  const view = new DataView(first8.buffer, first8.byteOffset, 8);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > fileSize - 8) {
    throw invalidArgument(
      `${file}: header length ${headerLen} exceeds the file (${fileSize - 8} bytes after it)`,
    );
  }
  return headerLen;
}

/**
 * Parses the header of a safetensors file of `fileSize` bytes from its first bytes (`head` holds
 * at least the 8-byte length and the JSON): every tensor's claims are checked against the size,
 * so no data needs to be in memory to validate it. `file` names it in errors.
 */
export function parseSafetensorsHeader(
  head: Uint8Array,
  fileSize: number,
  file: string,
): SafetensorsHeader {
  const headerLen = headerLength(head, fileSize, file);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder().decode(head.subarray(8, 8 + headerLen)));
  } catch (e) {
    throw invalidArgument(`${file}: header is not valid JSON (${(e as Error).message})`);
  }
  const dataLength = fileSize - 8 - headerLen;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = value as Record<string, string>;
      continue;
    }
    const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof v.dtype !== "string" || !(v.dtype in BYTES)) {
      throw invalidArgument(
        `${file}: tensor "${name}" has dtype ${JSON.stringify(v.dtype)}: expected one of ${
          Object.keys(BYTES).join(", ")
        }`,
      );
    }
    const dtype = v.dtype as Dtype;
    if (!Array.isArray(v.shape) || !v.shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw invalidArgument(
        `${file}: tensor "${name}" has an invalid shape ${JSON.stringify(v.shape)}`,
      );
    }
    const offs = v.data_offsets;
    if (
      !Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isInteger(o) && o >= 0)
    ) {
      throw invalidArgument(
        `${file}: tensor "${name}" has invalid data_offsets ${JSON.stringify(offs)}`,
      );
    }
    const [begin, end] = offs as [number, number];
    const count = (v.shape as number[]).reduce((a, b) => a * b, 1);
    const expected = count * BYTES[dtype];
    if (end - begin !== expected) {
      throw invalidArgument(
        `${file}: tensor "${name}" (${dtype} ${
          JSON.stringify(v.shape)
        }) needs ${expected} bytes: ` +
          `data_offsets [${begin}, ${end}] give ${end - begin}`,
      );
    }
    if (end > dataLength) {
      throw invalidArgument(
        `${file}: tensor "${name}" ends at byte ${end} of the data section: only ${dataLength} bytes exist`,
      );
    }
    tensors.set(name, { dtype, shape: v.shape as number[], begin, end });
  }
  return { tensors, metadata, dataStart: 8 + headerLen };
}

/** Parses a safetensors buffer (in memory or a mapped file); `file` names it in errors. */
export function parseSafetensors(bytes: Uint8Array, file: string): SafetensorsFile {
  const { tensors, metadata, dataStart } = parseSafetensorsHeader(bytes, bytes.length, file);
  return { file, tensors, metadata, data: bytes.subarray(dataStart) };
}

/** Bytes per element of each dtype. */
export function dtypeBytes(dtype: Dtype): number {
  return BYTES[dtype];
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Decodes a tensor to float32 (F16 and BF16 are widened exactly). */
export function readFloat32(f: SafetensorsFile, name: string): Float32Array {
  const info = f.tensors.get(name);
  if (!info) throw invalidArgument(`${f.file}: no tensor named "${name}"`);
  if (info.dtype === "BOOL" || info.dtype === "U8") {
    throw invalidArgument(`${f.file}: tensor "${name}" is ${info.dtype}: not a number tensor`);
  }
  const raw = f.data.subarray(info.begin, info.end);
  const out = new Float32Array(raw.length / BYTES[info.dtype]);
  decodeInto(info.dtype, raw, out, 0);
  return out;
}

/**
 * Decodes the whole elements in `raw` (little-endian, of `dtype`) into `out` from element `at`;
 * loaders decode a tensor chunk by chunk through it. BOOL and U8 are refused by the callers.
 */
export function decodeInto(dtype: Dtype, raw: Uint8Array, out: Float32Array, at: number): void {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const n = Math.floor(raw.length / BYTES[dtype]);
  switch (dtype) {
    case "F32":
      // Little-endian hosts (x86, ARM) hold float32 in the file's byte order: one copy.
      new Uint8Array(out.buffer, out.byteOffset + at * 4, n * 4).set(raw.subarray(0, n * 4));
      break;
    case "F16": {
      // A 64k lookup table makes widening a 9M-element checkpoint a few milliseconds.
      const table = f16Table();
      if (raw.byteOffset % 2 === 0) {
        // Aligned (the usual case): a Uint16Array view reads several times faster than DataView.
        const h = new Uint16Array(raw.buffer, raw.byteOffset, n);
        for (let i = 0; i < n; i++) out[at + i] = table[h[i]];
      } else {
        for (let i = 0; i < n; i++) out[at + i] = table[view.getUint16(i * 2, true)];
      }
      break;
    }
    case "BF16": {
      const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
      if (raw.byteOffset % 2 === 0) {
        const h = new Uint16Array(raw.buffer, raw.byteOffset, n);
        for (let i = 0; i < n; i++) u[at + i] = h[i] << 16;
      } else {
        for (let i = 0; i < n; i++) u[at + i] = view.getUint16(i * 2, true) << 16;
      }
      break;
    }
    case "I32":
      for (let i = 0; i < n; i++) out[at + i] = view.getInt32(i * 4, true);
      break;
    case "I64":
      for (let i = 0; i < n; i++) out[at + i] = Number(view.getBigInt64(i * 8, true));
      break;
    default:
      throw invalidArgument(`dtype ${dtype} is not a number type`);
  }
}

/** Decodes an integer tensor (I32 or I64) to Int32Array. */
export function readInt32(f: SafetensorsFile, name: string): Int32Array {
  const info = f.tensors.get(name);
  if (!info) throw invalidArgument(`${f.file}: no tensor named "${name}"`);
  if (info.dtype !== "I32" && info.dtype !== "I64") {
    throw invalidArgument(`${f.file}: tensor "${name}" is ${info.dtype}: expected I32 or I64`);
  }
  return Int32Array.from(readFloat32(f, name));
}

let table: Float32Array | undefined;
export function f16Table(): Float32Array {
  if (!table) {
    table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) table[i] = f16ToF32(i);
  }
  return table;
}

export interface TensorToWrite {
  dtype: "F32" | "I32";
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Serialises tensors (sorted by name, as the reference writer does) to safetensors bytes. */
export function encodeSafetensors(
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Uint8Array {
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const t = tensors[name];
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw invalidArgument(
        `tensor "${name}": shape ${
          JSON.stringify(t.shape)
        } holds ${count} values: data has ${t.data.length}`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + count * 4] };
    offset += count * 4;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data section starts 8-byte aligned.
  while ((8 + json.length) % 8 !== 0) json += " ";
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const name of names) {
    const d = tensors[name].data;
    // Little-endian hosts (x86, ARM) store typed arrays in the file's byte order.
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), at);
    at += d.byteLength;
  }
  return out;
}
