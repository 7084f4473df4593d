/** Scratch entries of the disk store: naming them after their writer, and telling leftovers from live work. */

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
