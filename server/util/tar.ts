/**
 * A minimal POSIX ustar writer: regular files only, names up to 100 bytes (ASCII), which is all the
 * task archives need. Readable by `tar`, Python's tarfile (and so by NeMo's .nemo loader).
 */

export interface TarEntry {
  name: string;
  data: Uint8Array;
}

const BLOCK = 512;

function octal(n: number, width: number): string {
  // width - 1 digits and a NUL, as ustar writes numeric fields.
  return n.toString(8).padStart(width - 1, "0") + "\0";
}

function header(name: string, size: number, mtime: number): Uint8Array {
  const enc = new TextEncoder();
  const nameBytes = enc.encode(name);
  if (nameBytes.length === 0 || nameBytes.length > 100 || !/^[\x20-\x7e]+$/.test(name)) {
    throw new RangeError(
      `tar: entry name must be 1-100 printable ASCII bytes: ${JSON.stringify(name)}`,
    );
  }
  const h = new Uint8Array(BLOCK);
  const put = (text: string, at: number) => h.set(enc.encode(text), at);
  h.set(nameBytes, 0);
  put(octal(0o644, 8), 100); // mode
  put(octal(0, 8), 108); // uid
  put(octal(0, 8), 116); // gid
  put(octal(size, 12), 124);
  put(octal(mtime, 12), 136);
  put("        ", 148); // checksum field counts as spaces while summing
  put("0", 156); // regular file
  put("ustar\0", 257);
  put("00", 263);
  let sum = 0;
  for (const b of h) sum += b;
  put(sum.toString(8).padStart(6, "0") + "\0 ", 148);
  return h;
}

/** The archive's bytes: each entry's header and data padded to 512 bytes, then two zero blocks. */
export function encodeTar(entries: readonly TarEntry[], mtime = 0): Uint8Array {
  const size = entries.reduce(
    (n, e) => n + BLOCK + Math.ceil(e.data.length / BLOCK) * BLOCK,
    2 * BLOCK,
  );
  const out = new Uint8Array(size);
  let at = 0;
  for (const e of entries) {
    out.set(header(e.name, e.data.length, mtime), at);
    at += BLOCK;
    out.set(e.data, at);
    at += Math.ceil(e.data.length / BLOCK) * BLOCK;
  }
  return out;
}
