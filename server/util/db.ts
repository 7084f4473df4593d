/**
 * The PostgreSQL connection of a replica: a pool for queries, one dedicated connection for
 * LISTEN (reconnected by itself with backoff), the service's versioned migrations run at open,
 * and one translation of "the database cannot be reached" into an `unavailable` ServiceError that
 * names the database (never its password) so callers get UNAVAILABLE with a clear message.
 */
import pg from "pg";
import { ServiceError } from "../errors.ts";
import { type Migration, MIGRATIONS } from "./migrations.ts";

export interface DatabaseOptions {
  /** Connections in the query pool. Default 10. */
  maxConnections?: number;
  /** How long a query waits for a connection before the database counts as unavailable. */
  connectTimeoutMs?: number;
  /** Log sink for connection state changes. Default: JSON lines on stderr. */
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  /** The migrations to apply (tests only). Default: the service's. */
  migrations?: readonly Migration[];
}

/** What runs a query: the database (outside a transaction) or a transaction's client. */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params?: unknown[],
  ): Promise<pg.QueryResult<R>>;
}

/** SQLSTATE classes that mean the server or the connection is gone, not that the query is wrong. */
function isConnectionFailure(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string") {
    if (/^(08|57P0)/.test(code) || code === "53300") return true;
    // A Node socket error (ECONNREFUSED, ECONNRESET, ETIMEDOUT, EPIPE, ...).
    if (/^E[A-Z]+$/.test(code)) return true;
    return false;
  }
  // pg's own words for a connection that broke or never came.
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Connection refused|not queryable|Client was closed/i
    .test(err.message);
}

/** The database as messages may show it: host, port and name, no credentials. */
export function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || "5432"}${u.pathname}`;
  } catch {
    return "(unparsable DATABASE_URL)";
  }
}

export class Database implements Queryable {
  readonly pool: pg.Pool;
  readonly #url: string;
  readonly #log: NonNullable<DatabaseOptions["log"]>;
  readonly #handlers = new Map<string, Set<(payload: string) => void>>();
  readonly #onConnect = new Set<() => void>();
  #listener: pg.Client | null = null;
  #listening = false;
  #closed = false;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #backoffMs = 250;

  private constructor(url: string, opts: DatabaseOptions) {
    this.#url = url;
    this.#log = opts.log ??
      ((msg, fields) => console.error(JSON.stringify({ msg, ...fields })));
    this.pool = new pg.Pool({
      connectionString: url,
      max: opts.maxConnections ?? 10,
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 3000,
      idleTimeoutMillis: 10_000,
    });
    // An idle connection dropped by the server: the pool replaces it on next use.
    this.pool.on("error", (e) => this.#log("database connection lost", { error: e.message }));
  }

  /**
   * Connects, applies pending migrations (replicas starting together take turns under an advisory
   * lock) and starts listening. Fails naming DATABASE_URL when the database cannot be reached.
   */
  static async open(url: string, opts: DatabaseOptions = {}): Promise<Database> {
    const db = new Database(url, opts);
    try {
      await db.#migrate(opts.migrations ?? MIGRATIONS);
      await db.#connectListener();
    } catch (e) {
      await db.close();
      if (isConnectionFailure(e)) {
        throw new Error(
          `DATABASE_URL: cannot reach the database at ${describeUrl(url)}: ${(e as Error).message}`,
        );
      }
      throw e;
    }
    return db;
  }

  /** Whether the LISTEN connection is up: only then are notifications (and caches) trustworthy. */
  get listening(): boolean {
    return this.#listening;
  }

  /**
   * An `unavailable` ServiceError for a connection failure, `resource_exhausted` for a database
   * out of disk space (SQLSTATE 53100 disk_full: the statement was rolled back); anything else
   * unchanged.
   */
  translate(err: unknown): unknown {
    if (err instanceof ServiceError) return err;
    if ((err as { code?: unknown } | null)?.code === "53100") {
      return new ServiceError(
        "resource_exhausted",
        `the database (${describeUrl(this.#url)}) is out of disk space (PostgreSQL disk_full): ` +
          "free space there, then retry; what was stored before is intact",
        { cause: err },
      );
    }
    if (!isConnectionFailure(err)) return err;
    return new ServiceError(
      "unavailable",
      `the database (${describeUrl(this.#url)}) is unavailable: ${
        (err as Error).message
      }; retry later`,
      { cause: err },
    );
  }

  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params: unknown[] = [],
  ): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(sql, params);
    } catch (e) {
      throw this.translate(e);
    }
  }

  /** Runs `fn` in a transaction: committed when it returns, rolled back when it throws. */
  async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw this.translate(e);
    }
    let broken = false;
    try {
      await client.query("BEGIN");
      const out = await fn(client);
      await client.query("COMMIT");
      return out;
    } catch (e) {
      broken = isConnectionFailure(e);
      if (!broken) await client.query("ROLLBACK").catch(() => {});
      throw this.translate(e);
    } finally {
      client.release(broken ? true : undefined);
    }
  }

  /** Calls `fn` with each notification's payload on `channel` (payloads are ours: names, ids). */
  async listen(channel: string, fn: (payload: string) => void): Promise<void> {
    if (!/^[a-z_]+$/.test(channel)) throw new RangeError(`bad channel name ${channel}`);
    let set = this.#handlers.get(channel);
    if (!set) {
      set = new Set();
      this.#handlers.set(channel, set);
      if (this.#listener && this.#listening) {
        await this.#listener.query(`LISTEN ${channel}`).catch(() => {});
      }
    }
    set.add(fn);
  }

  /**
   * Calls `fn` each time the LISTEN connection is (re)established: notifications sent while it
   * was down are lost, so whatever they would have invalidated must be invalidated now.
   */
  onConnect(fn: () => void): void {
    this.#onConnect.add(fn);
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retry);
    this.#listening = false;
    const l = this.#listener;
    this.#listener = null;
    await l?.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }

  async #migrate(migrations: readonly Migration[]): Promise<void> {
    const c = await this.pool.connect();
    try {
      await c.query("SELECT pg_advisory_lock(7271001)");
      try {
        await c.query(
          `CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())`,
        );
        const done = new Set(
          (await c.query<{ version: number }>("SELECT version FROM schema_migrations")).rows
            .map((r) => r.version),
        );
        const known = Math.max(0, ...migrations.map((m) => m.version));
        const newest = Math.max(0, ...done);
        if (newest > known) {
          throw new Error(
            `DATABASE_URL: the database's schema is at version ${newest}, newer than this ` +
              `service knows (${known}); refusing to run an older service against it`,
          );
        }
        for (const m of migrations) {
          if (done.has(m.version)) continue;
          await c.query("BEGIN");
          try {
            await c.query(m.sql);
            await c.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [
              m.version,
              m.name,
            ]);
            await c.query("COMMIT");
          } catch (e) {
            await c.query("ROLLBACK").catch(() => {});
            throw new Error(`migration ${m.version} (${m.name}) failed: ${(e as Error).message}`, {
              cause: e,
            });
          }
          this.#log("database migrated", { version: m.version, name: m.name });
        }
      } finally {
        await c.query("SELECT pg_advisory_unlock(7271001)").catch(() => {});
      }
    } finally {
      c.release();
    }
  }

  async #connectListener(): Promise<void> {
    const client = new pg.Client({ connectionString: this.#url, connectionTimeoutMillis: 3000 });
    const lost = (why: string) => {
      if (this.#listener !== client) return;
      this.#listener = null;
      this.#listening = false;
      client.end().catch(() => {});
      if (this.#closed) return;
      this.#log("database notifications lost; reconnecting", { error: why });
      this.#scheduleReconnect();
    };
    client.on("error", (e) => lost(e.message));
    client.on("end", () => lost("connection ended"));
    client.on("notification", (n) => {
      for (const fn of this.#handlers.get(n.channel) ?? []) fn(n.payload ?? "");
    });
    this.#listener = client;
    await client.connect();
    for (const channel of this.#handlers.keys()) await client.query(`LISTEN ${channel}`);
    this.#listening = true;
    this.#backoffMs = 250;
    for (const fn of this.#onConnect) fn();
  }

  #scheduleReconnect(): void {
    clearTimeout(this.#retry);
    this.#retry = setTimeout(async () => {
      if (this.#closed) return;
      try {
        await this.#connectListener();
        this.#log("database notifications restored");
      } catch {
        this.#listener?.end().catch(() => {});
        this.#listener = null;
        this.#backoffMs = Math.min(this.#backoffMs * 2, 2000);
        this.#scheduleReconnect();
      }
    }, this.#backoffMs);
  }
}
