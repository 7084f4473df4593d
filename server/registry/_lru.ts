/** A least-recently-used map bounded by a byte budget (Map keeps insertion order). */
export class ByteLru<V> {
  readonly #items = new Map<string, { value: V; bytes: number }>();
  #bytes = 0;

  constructor(readonly budget: number) {}

  get(key: string): V | undefined {
    const item = this.#items.get(key);
    if (!item) return undefined;
    this.#items.delete(key);
    this.#items.set(key, item);
    return item.value;
  }

  set(key: string, value: V, bytes: number): void {
    this.delete(key);
    if (bytes > this.budget) return;
    this.#items.set(key, { value, bytes });
    this.#bytes += bytes;
    for (const [k, item] of this.#items) {
      if (this.#bytes <= this.budget) break;
      this.#items.delete(k);
      this.#bytes -= item.bytes;
    }
  }

  delete(key: string): void {
    const item = this.#items.get(key);
    if (!item) return;
    this.#items.delete(key);
    this.#bytes -= item.bytes;
  }

  /** Drops every key that starts with `prefix`. */
  deletePrefix(prefix: string): void {
    for (const key of [...this.#items.keys()]) if (key.startsWith(prefix)) this.delete(key);
  }

  get bytes(): number {
    return this.#bytes;
  }
}
