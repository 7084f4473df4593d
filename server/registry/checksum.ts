/**
 * The checksum that guards a stored version: sha256 over the table's float32 bytes, then, for
 * each encoder tensor in name order, its name, a NUL, its shape as uint32s and its float32 bytes.
 * Names and shapes are included so that moving bytes between tensors also changes the sum.
 */
import { createHash } from "node:crypto";
import type { EncoderState } from "./types.ts";

function bytesOf(a: Float32Array | Uint32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** sha256 hex of a version's tensors. */
export function versionChecksum(table: Float32Array, encoderState?: EncoderState): string {
  const hash = createHash("sha256");
  hash.update(bytesOf(table));
  if (encoderState) {
    const enc = new TextEncoder();
    for (const name of Object.keys(encoderState.tensors).sort()) {
      const t = encoderState.tensors[name];
      hash.update(enc.encode(name));
      hash.update(new Uint8Array([0]));
      hash.update(bytesOf(Uint32Array.from(t.shape)));
      hash.update(bytesOf(t.data));
    }
  }
  return hash.digest("hex");
}
