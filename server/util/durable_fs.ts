/** Durable file-system steps: write a new file and fsync it; fsync a directory after renames. */

/** Bytes per write call, so that a crash test can stop a writer part-way through a file. */
export const CHUNK_BYTES = 1 << 20;

/** fsyncs a directory so that renames and creations inside it survive a power cut. */
export async function syncDir(path: string): Promise<void> {
  // Windows cannot open a directory as a file; its renames are durable on return anyway.
  if (Deno.build.os === "windows") return;
  const dir = await Deno.open(path, { read: true });
  try {
    await dir.sync();
  } finally {
    dir.close();
  }
}

/**
 * Creates `path` (it must not exist), writes `bytes` in chunks and fsyncs it.
 * `onChunk` runs after each chunk with the bytes written so far. A write that fails (a full
 * disk) removes the part it wrote, so the space is free again.
 */
export async function writeFileDurable(
  path: string,
  bytes: Uint8Array,
  onChunk?: (written: number) => void | Promise<void>,
): Promise<void> {
  const file = await Deno.open(path, { write: true, createNew: true });
  try {
    let at = 0;
    while (at < bytes.length) {
      const end = Math.min(at + CHUNK_BYTES, bytes.length);
      let pos = at;
      while (pos < end) pos += await file.write(bytes.subarray(pos, end));
      at = end;
      await onChunk?.(at);
    }
    await file.sync();
  } catch (e) {
    file.close();
    await Deno.remove(path).catch(() => {});
    throw e;
  }
  file.close();
}
