/**
 * Constrained decoding: the token sequences of a set of allowed answers as a trie. A sequence
 * decoded under it may only take tokens that keep it on a path of the trie, and ends when it has
 * taken one whole path: the answer it generated is then exactly one of the allowed ones.
 */

interface Node {
  children: Map<number, Node>;
  /** Index of the allowed answer whose path ends here, or -1. */
  answer: number;
}

export class TokenTrie {
  readonly #root: Node = { children: new Map(), answer: -1 };
  /** The longest path: the most tokens a constrained sequence can take. */
  readonly longest: number;

  /** `paths[i]`: the token ids of allowed answer i (at least one each). */
  constructor(paths: readonly ArrayLike<number>[]) {
    let longest = 0;
    for (const [i, path] of paths.entries()) {
      if (path.length === 0) throw new RangeError(`paths[${i}] must hold at least one token`);
      let node = this.#root;
      for (let t = 0; t < path.length; t++) {
        let next = node.children.get(path[t]);
        if (!next) {
          next = { children: new Map(), answer: -1 };
          node.children.set(path[t], next);
        }
        node = next;
      }
      // Two answers with one path are one answer: the first keeps it.
      if (node.answer < 0) node.answer = i;
      longest = Math.max(longest, path.length);
    }
    this.longest = longest;
  }

  /** A cursor at the root: where a sequence stands before its first token. */
  start(): TrieCursor {
    return new TrieCursor(this.#root);
  }
}

/** Where one sequence stands in the trie. */
export class TrieCursor {
  #node: Node;

  constructor(node: Node) {
    this.#node = node;
  }

  /**
   * The tokens allowed next. `endId` (EOS) is among them where a whole answer ends here and longer
   * ones go on: taking it ends the sequence with that answer.
   */
  allowed(endId: number): number[] {
    const ids = [...this.#node.children.keys()];
    if (this.#node.answer >= 0 && !this.#node.children.has(endId)) ids.push(endId);
    return ids;
  }

  /**
   * Takes `id`; returns the index of the answer it completes, or -1 while the sequence must go
   * on. A path that ends where nothing longer goes on completes its answer at once.
   */
  take(id: number, endId: number): number {
    const next = this.#node.children.get(id);
    if (!next) {
      if (id === endId && this.#node.answer >= 0) return this.#node.answer;
      throw new RangeError(`token ${id} is not allowed here`);
    }
    this.#node = next;
    return next.answer >= 0 && next.children.size === 0 ? next.answer : -1;
  }
}
