/**
 * The TCP (or TLS) listener in front of grpc-js. Each accepted connection goes through a
 * `GoawayFilter` (see there: the workaround for denoland/deno#36788) and is then injected into
 * grpc-js with `Server.createConnectionInjector()`, so grpc-js never owns the socket it would
 * crash on. TLS is terminated here (ALPN "h2") and the filter sees the plaintext frames.
 */
import net from "node:net";
import tls from "node:tls";
import type { Duplex } from "node:stream";
import { type FilterableSocket, GoawayFilter } from "./goaway_filter.ts";

export interface ListenerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** PEM certificate chain and key: TLS when given. */
  tls?: { cert: string; key: string };
  /** Remove client GOAWAY frames before they reach the HTTP/2 session. Default true. */
  filterGoaway?: boolean;
  /** Receives each accepted (filtered) connection. */
  inject(connection: Duplex): void;
}

export interface ListenerStats {
  connectionsOpen: number;
  connectionsTotal: number;
  goawaysDropped: number;
}

export class GrpcListener {
  readonly #opts: ListenerOptions;
  readonly #server: net.Server;
  readonly #open = new Set<FilterableSocket>();
  #total = 0;
  #dropped = 0;

  constructor(opts: ListenerOptions) {
    this.#opts = opts;
    const onSocket = (socket: FilterableSocket) => this.#accept(socket);
    this.#server = opts.tls
      ? tls.createServer(
        { cert: opts.tls.cert, key: opts.tls.key, ALPNProtocols: ["h2"] },
        onSocket,
      )
      : net.createServer(onSocket);
  }

  #accept(socket: FilterableSocket): void {
    this.#total++;
    this.#open.add(socket);
    socket.on("error", () => {}); // reported through the filter/session; never fatal here
    if (this.#opts.filterGoaway === false) {
      socket.on("close", () => this.#open.delete(socket));
      this.#opts.inject(socket);
      return;
    }
    const filter = new GoawayFilter(socket);
    filter.on("error", () => {});
    filter.on("close", () => {
      this.#open.delete(socket);
      this.#dropped += filter.stats.goawaysDropped;
    });
    this.#opts.inject(filter);
  }

  /** Starts listening; resolves with the bound address. */
  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.#server.once("error", onError);
      this.#server.listen(this.#opts.port, this.#opts.host, () => {
        this.#server.off("error", onError);
        const addr = this.#server.address() as net.AddressInfo;
        resolve({ host: addr.address, port: addr.port });
      });
    });
  }

  /** Stops accepting connections (open ones stay; `destroyConnections()` drops them). */
  close(): void {
    if (this.#server.listening) this.#server.close();
  }

  /** Drops every open connection at once. */
  destroyConnections(): void {
    for (const s of this.#open) s.destroy();
    this.#open.clear();
  }

  get stats(): ListenerStats {
    return {
      connectionsOpen: this.#open.size,
      connectionsTotal: this.#total,
      goawaysDropped: this.#dropped,
    };
  }
}
