/**
 * The split rule of `data/README.md` and the JSONL spelling of the shipped splits.
 * - sentiment, intent_and_slot: byte 0 of sha256(text, UTF-8) mod 10: 0 test, 1 val, else train.
 * - squad: articles ordered by the hex sha256 of their title: first 3 test, next 3 val, rest train.
 */
import { createHash } from "node:crypto";

export type Split = "train" | "val" | "test";
export const SPLITS: readonly Split[] = ["train", "val", "test"];

/** One task's records per split, each in source order. */
export type SplitRecords = Record<Split, Record<string, string>[]>;

export function emptySplits(): SplitRecords {
  return { train: [], val: [], test: [] };
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

/** The bucket of a sentence or utterance. */
export function bucketOf(text: string): Split {
  const b = sha256(text)[0] % 10;
  return b === 0 ? "test" : b === 1 ? "val" : "train";
}

/** Split of each title: titles ranked by hex sha256; ranks 0-2 test, 3-5 val, the rest train. */
export function splitTitles(titles: readonly string[]): Map<string, Split> {
  const ranked = titles
    .map((t) => ({ t, h: sha256(t).toString("hex") }))
    .sort((a, b) => (a.h < b.h ? -1 : a.h > b.h ? 1 : 0));
  return new Map(ranked.map(({ t }, i) => [t, i < 3 ? "test" : i < 6 ? "val" : "train"]));
}

/**
 * One compact JSON object per line, keys in insertion order, non-ASCII written as is: the same
 * bytes as Python's `json.dumps(r, ensure_ascii=False, separators=(",", ":"))`, which wrote the
 * shipped splits (both escape only `"`, `\` and control characters, in lower-case hex).
 */
export function toJsonl(records: readonly Record<string, string>[]): string {
  let out = "";
  for (const r of records) out += JSON.stringify(r) + "\n";
  return out;
}
