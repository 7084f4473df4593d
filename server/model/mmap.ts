/**
 * Read-only memory maps of checkpoint files through libc (Deno FFI), so float32 weights are
 * views of the page cache instead of copies on the heap: loading costs no allocation, pages come
 * in as they are first read, and several processes serving the same model share one copy.
 *
 * A mapping lives while its ArrayBuffer does (unmapped when that is collected) unless it is
 * pinned: a worker in this process that was handed its address (`viewAt`) keeps it alive for
 * the rest of the process. Where FFI is not allowed or libc cannot be opened, `mapFile` returns
 * null and callers read the file instead. A mapped file truncated or rewritten in place while
 * mapped faults the process (SIGBUS), as with any mmap: replace checkpoints by renaming.
 */

const PROT_READ = 1;
const MAP_PRIVATE = 2;
const MADV_DONTNEED = 4;
const O_RDONLY = 0, O_CLOEXEC = 0o2000000;
const PAGE = 4096;

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
let libc: Libc | null | undefined;

function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  libc = null;
  if (Deno.build.os !== "linux") return libc;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return libc;
    libc = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  } catch {
    libc = null;
  }
  return libc;
}

/** Whether files can be mapped in this process (FFI allowed, Linux libc present). */
export function canMap(): boolean {
  return loadLibc() !== null;
}

interface Mapping {
  address: bigint;
  byteLength: number;
}

/** Mapped buffers by identity: their address, for handing to a worker and for madvise. */
const mappings = new WeakMap<ArrayBuffer, Mapping>();
/** Buffers whose memory a worker reads: never unmapped. */
const pinned = new Set<ArrayBuffer>();
const unmapper = new FinalizationRegistry<Mapping>((m) => {
  libc?.munmap(Deno.UnsafePointer.create(m.address), BigInt(m.byteLength));
});

/**
 * Maps `path` read-only; null when mapping is unavailable here or the file is empty. Throws the
 * file's own error (not found, permission) otherwise.
 */
export function mapFile(path: string): Uint8Array | null {
  const c = loadLibc();
  if (!c) return null;
  const size = Deno.statSync(path).size;
  if (size === 0) return null;
  const fd = c.open(new TextEncoder().encode(path + "\0"), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw new Error(`${path}: cannot be opened for mapping`);
  try {
    const p = c.mmap(null, BigInt(size), PROT_READ, MAP_PRIVATE, fd, 0n);
    const address = BigInt(Deno.UnsafePointer.value(p));
    if (p === null || address === 0xffffffffffffffffn) {
      throw new Error(`${path}: mmap of ${size} bytes failed`);
    }
    const buffer = Deno.UnsafePointerView.getArrayBuffer(p!, size);
    const m = { address, byteLength: size };
    mappings.set(buffer, m);
    unmapper.register(buffer, m);
    return new Uint8Array(buffer);
  } finally {
    c.close(fd);
  }
}

/** Whether `a` is a view of a mapped file. */
export function isMapped(a: ArrayBufferView): boolean {
  return mappings.has(a.buffer as ArrayBuffer);
}

/**
 * The address of a mapped view's first byte, pinning its mapping for the life of the process
 * (the caller hands it to a worker, which `viewAt`s it). Null for a view of anything else.
 */
export function pinnedAddress(a: ArrayBufferView): bigint | null {
  const m = mappings.get(a.buffer as ArrayBuffer);
  if (!m) return null;
  pinned.add(a.buffer as ArrayBuffer);
  return m.address + BigInt(a.byteOffset);
}

/** A view of `byteLength` bytes at `address` (a mapping pinned by this process). */
export function viewAt(address: bigint, byteLength: number): ArrayBuffer {
  const p = Deno.UnsafePointer.create(address);
  if (p === null) throw new RangeError("viewAt: null address");
  return Deno.UnsafePointerView.getArrayBuffer(p, byteLength);
}

/**
 * Drops the resident pages of a mapped view's byte range (whole pages inside it only) once they
 * have been read: they count against this process no longer, and a later read faults them in
 * again from the page cache. For tensors converted to another array at load. No-op elsewhere.
 */
export function release(a: ArrayBufferView): void {
  const m = mappings.get(a.buffer as ArrayBuffer);
  if (!m || !libc) return;
  const start = m.address + BigInt(a.byteOffset);
  const from = (start + BigInt(PAGE - 1)) / BigInt(PAGE) * BigInt(PAGE);
  const to = (start + BigInt(a.byteLength)) / BigInt(PAGE) * BigInt(PAGE);
  if (to <= from) return;
  libc.madvise(Deno.UnsafePointer.create(from), to - from, MADV_DONTNEED);
}
