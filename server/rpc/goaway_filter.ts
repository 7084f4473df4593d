/**
 * The workaround for denoland/deno#36788: Deno 2.9's `node:http2` (nghttp2 driven from Rust)
 * corrupts its stream map once a session has carried more than ~128 streams, and the process
 * dies (`free(): invalid pointer`, or nghttp2's `find_stream_on_goaway_func` assertion) as soon
 * as nghttp2 walks that map, which it does when a GOAWAY frame arrives. grpc-js clients send
 * GOAWAY whenever they close a channel, so any server that lives long enough dies.
 *
 * A connection that simply ends (EOF, no GOAWAY) takes another path (the session is terminated
 * without the walk) and is safe; so is the server's own GOAWAY at shutdown. `GoawayFilter` sits
 * between the socket and the HTTP/2 session and removes the frames of type GOAWAY (0x7) that the
 * peer sends; nothing else changes. The client still stops opening streams on that connection,
 * finishes the ones in flight and closes the socket, which the server sees as EOF.
 *
 * It is a streaming parser: frame payloads pass through as they arrive (no frame is buffered
 * whole); only the 9-byte frame headers are held until complete.
 */
import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";

/** "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" */
const PREFACE_LENGTH = 24;
const FRAME_HEADER_LENGTH = 9;
const GOAWAY = 0x7;

/** What the filter needs of a socket (a `net.Socket` or `tls.TLSSocket`). */
export interface FilterableSocket extends Duplex {
  remoteAddress?: string;
  remotePort?: number;
  localAddress?: string;
  localPort?: number;
  setNoDelay?(noDelay?: boolean): unknown;
}

export interface GoawayFilterStats {
  /** GOAWAY frames removed from the inbound byte stream. */
  goawaysDropped: number;
  bytesIn: number;
}

/**
 * Parses the inbound HTTP/2 byte stream and reports which byte ranges to keep. Separate from the
 * Duplex so it can be tested on arbitrary chunkings.
 */
export class FrameScanner {
  #prefaceLeft = PREFACE_LENGTH;
  /** Bytes of the current frame's payload still to come. */
  #payloadLeft = 0;
  #dropping = false;
  #header = Buffer.alloc(FRAME_HEADER_LENGTH);
  #headerHave = 0;
  goawaysDropped = 0;

  /** The bytes of `chunk` to forward (header bytes may be held until their frame is known). */
  scan(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.#prefaceLeft > 0) {
        const n = Math.min(this.#prefaceLeft, chunk.length - at);
        out.push(chunk.subarray(at, at + n));
        this.#prefaceLeft -= n;
        at += n;
      } else if (this.#payloadLeft > 0) {
        const n = Math.min(this.#payloadLeft, chunk.length - at);
        if (!this.#dropping) out.push(chunk.subarray(at, at + n));
        this.#payloadLeft -= n;
        at += n;
      } else {
        const n = Math.min(FRAME_HEADER_LENGTH - this.#headerHave, chunk.length - at);
        this.#header.set(chunk.subarray(at, at + n), this.#headerHave);
        this.#headerHave += n;
        at += n;
        if (this.#headerHave < FRAME_HEADER_LENGTH) break;
        this.#headerHave = 0;
        this.#payloadLeft = this.#header.readUIntBE(0, 3);
        this.#dropping = this.#header[3] === GOAWAY;
        if (this.#dropping) this.goawaysDropped++;
        else out.push(Buffer.from(this.#header));
      }
    }
    return out;
  }
}

/**
 * A Duplex over `socket` whose readable side is the socket's bytes minus the peer's GOAWAY frames.
 * Hand it to grpc-js (`Server.createConnectionInjector().injectConnection`).
 */
export class GoawayFilter extends Duplex {
  readonly #socket: FilterableSocket;
  readonly #scanner = new FrameScanner();
  #bytesIn = 0;

  constructor(socket: FilterableSocket) {
    super({ allowHalfOpen: false });
    this.#socket = socket;
    // Small gRPC frames must not wait for Nagle (40 ms per call otherwise).
    socket.setNoDelay?.(true);
    socket.on("data", (chunk: Buffer) => {
      this.#bytesIn += chunk.length;
      const parts = this.#scanner.scan(chunk);
      if (parts.length === 0) return;
      if (!this.push(parts.length === 1 ? parts[0] : Buffer.concat(parts))) socket.pause();
    });
    socket.on("end", () => this.push(null));
    socket.on("error", (err: Error) => this.destroy(err));
    socket.on("close", () => this.destroy());
  }

  get remoteAddress(): string | undefined {
    return this.#socket.remoteAddress;
  }
  get remotePort(): number | undefined {
    return this.#socket.remotePort;
  }
  get localAddress(): string | undefined {
    return this.#socket.localAddress;
  }
  get localPort(): number | undefined {
    return this.#socket.localPort;
  }
  setNoDelay(noDelay = true): this {
    this.#socket.setNoDelay?.(noDelay);
    return this;
  }
  setKeepAlive(): this {
    return this;
  }
  setTimeout(): this {
    return this;
  }

  get stats(): GoawayFilterStats {
    return { goawaysDropped: this.#scanner.goawaysDropped, bytesIn: this.#bytesIn };
  }

  override _read(): void {
    this.#socket.resume();
  }

  override _write(
    chunk: Buffer,
    _encoding: BufferEncoding,
    callback: (error?: Error | null) => void,
  ): void {
    if (this.#socket.destroyed) {
      callback(new Error("socket closed"));
      return;
    }
    this.#socket.write(chunk, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#socket.end(() => callback());
  }

  override _destroy(err: Error | null, callback: (error: Error | null) => void): void {
    this.#socket.destroy();
    callback(err);
  }
}
