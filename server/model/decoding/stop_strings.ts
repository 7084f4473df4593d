/**
 * Follows a sequence's generated text for stop strings and streaming. The text is re-decoded from
 * all generated ids each time (byte-level BPE can complete a multi-byte character a token later, so
 * decoding token by token is wrong); outputs are short, so this stays cheap.
 */

export type Decode = (ids: readonly number[]) => string;

const REPLACEMENT = "\uFFFD";

export class StopStringTracker {
  readonly #decode: Decode;
  readonly #stops: readonly string[];
  readonly #ids: number[] = [];
  #text = "";
  /** `#text` lags `#ids` (decoding waits until text is needed: no stop strings to watch). */
  #stale = false;
  /** Characters of `#text` already handed out by `takeDelta()`. */
  #emitted = 0;
  /** Where the first stop string begins, once one has appeared. */
  #stopAt = -1;

  constructor(decode: Decode, stops: readonly string[]) {
    this.#decode = decode;
    this.#stops = stops;
  }

  /** Appends a generated (non-EOS) token; true when the text now contains a stop string. */
  push(tokenId: number): boolean {
    if (this.#stopAt >= 0) throw new Error("push() after a stop string was found");
    this.#ids.push(tokenId);
    if (this.#stops.length === 0) {
      this.#stale = true;
      return false;
    }
    const before = stableLength(this.#text);
    this.#text = this.#decode(this.#ids);
    let first = -1;
    for (const s of this.#stops) {
      // Only a match that ends in the new text can be new; earlier text was searched already.
      const from = Math.max(0, before - s.length + 1);
      const at = this.#text.indexOf(s, from);
      if (at >= 0 && (first < 0 || at < first)) first = at;
    }
    this.#stopAt = first;
    return first >= 0;
  }

  get stopped(): boolean {
    return this.#stopAt >= 0;
  }

  /** The result text: everything decoded, cut before the stop string when one was found. */
  get text(): string {
    if (this.#stale) {
      this.#text = this.#decode(this.#ids);
      this.#stale = false;
    }
    return this.#stopAt >= 0 ? this.#text.slice(0, this.#stopAt) : this.#text;
  }

  /**
   * Text that is final and not yet handed out. Holds back a trailing incomplete character and any
   * tail that could still grow into a stop string; `final` releases everything that remains.
   */
  takeDelta(final: boolean): string {
    const full = this.text;
    let end = full.length;
    if (!final && this.#stopAt < 0) {
      end = stableLength(full);
      end -= longestStopPrefixSuffix(full.slice(0, end), this.#stops);
    }
    if (end <= this.#emitted) return "";
    const delta = full.slice(this.#emitted, end);
    this.#emitted = end;
    return delta;
  }
}

/** Length without trailing U+FFFD (a multi-byte character whose bytes are not all here yet). */
function stableLength(text: string): number {
  let end = text.length;
  while (end > 0 && text[end - 1] === REPLACEMENT) end--;
  return end;
}

/** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
export function longestStopPrefixSuffix(text: string, stops: readonly string[]): number {
  let best = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > best; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}
