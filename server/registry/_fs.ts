/** Durable file-system steps: write+fsync, fsync a directory, and telling leftovers from live work. */

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
 * `onChunk` runs after each chunk with the bytes written so far.
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
  } finally {
    file.close();
  }
}

function hostname(): string {
  try {
    return Deno.hostname();
  } catch {
    // Without --allow-sys the host is unknown; leftovers then only go by pid on this host.
    return "unknown";
  }
}

/** A scratch entry name that records who made it: `<pid>.<uuid>.<host>`. */
export function scratchName(): string {
  return `${Deno.pid}.${crypto.randomUUID()}.${encodeURIComponent(hostname())}`;
}

/**
 * Whether a scratch entry was left by a process that is gone: same host, another pid, and no
 * /proc entry for it. Where /proc does not exist the answer is "not known to be stale".
 */
export function isStaleScratch(entry: string): boolean {
  const m = /^(\d+)\.[0-9a-f-]{36}\.(.+)$/.exec(entry);
  if (!m) return false;
  const pid = Number(m[1]);
  let host = "";
  try {
    host = decodeURIComponent(m[2]);
  } catch {
    return false; // Not a name we made.
  }
  if (pid === Deno.pid || host !== hostname()) return false;
  try {
    Deno.statSync("/proc/self");
  } catch {
    return false;
  }
  try {
    Deno.statSync(`/proc/${pid}`);
    return false;
  } catch {
    return true;
  }
}

/** Whether an error from rename says the target directory already exists with contents. */
export function isTargetTaken(e: unknown): boolean {
  if (e instanceof Deno.errors.AlreadyExists) return true;
  const code = (e as { code?: unknown }).code;
  return code === "ENOTEMPTY" || code === "EEXIST";
}
