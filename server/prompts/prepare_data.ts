/**
 * `deno task prepare-data --raw data/raw --out <dir> [--check data/splits]`
 * Turns the raw sources into the nine split files `<task>_<split>.jsonl` of data/splits, by the
 * rule in data/README.md. `--raw ../shared/data` works too: the folder layout is the same.
 */
import { intentAndSlotSplits, sentimentSplits, squadSplits } from "./raw_sources.ts";
import { type SplitRecords, SPLITS, toJsonl } from "./split_rule.ts";

export const TASKS = ["sentiment", "intent_and_slot", "squad"] as const;
export type PreparedTask = (typeof TASKS)[number];

/** Where each task's raw file lives under the raw folder. */
export const RAW_FILES: Record<PreparedTask, string> = {
  sentiment: "financial_phrasebank/Sentences_AllAgree.txt",
  intent_and_slot: "nlu_evaluation_data/hwu64_annotated_10fold_union.csv",
  squad: "squad_v2/dev-v2.0.reconstructed_from_explorer.json",
};

export interface PreparedFile {
  /** e.g. "sentiment_train.jsonl" */
  name: string;
  records: number;
  text: string;
}

async function readRaw(rawDir: string, task: PreparedTask): Promise<Uint8Array> {
  const path = `${rawDir}/${RAW_FILES[task]}`;
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(`${path}: raw file of task "${task}" not found`);
    }
    throw e;
  }
}

/** Builds the split files of `tasks` (default all) from `rawDir`, in memory. */
export async function prepareSplits(
  rawDir: string,
  tasks: readonly PreparedTask[] = TASKS,
): Promise<PreparedFile[]> {
  const files: PreparedFile[] = [];
  for (const task of tasks) {
    const bytes = await readRaw(rawDir, task);
    const path = `${rawDir}/${RAW_FILES[task]}`;
    const utf8 = () => new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    const splits: SplitRecords = task === "sentiment"
      ? sentimentSplits(bytes, path)
      : task === "intent_and_slot"
      ? intentAndSlotSplits(utf8(), path)
      : squadSplits(utf8(), path);
    for (const split of SPLITS) {
      const records = splits[split];
      files.push({
        name: `${task}_${split}.jsonl`,
        records: records.length,
        text: toJsonl(records),
      });
    }
  }
  return files;
}

/** Writes the prepared files into `outDir` (created if needed). */
export async function writeSplits(files: readonly PreparedFile[], outDir: string): Promise<void> {
  await Deno.mkdir(outDir, { recursive: true });
  for (const f of files) await Deno.writeTextFile(`${outDir}/${f.name}`, f.text);
}

/** Names of the files that differ from (or are missing in) `dir`, with the first differing line. */
export async function compareSplits(
  files: readonly PreparedFile[],
  dir: string,
): Promise<string[]> {
  const problems: string[] = [];
  for (const f of files) {
    let have: string;
    try {
      have = await Deno.readTextFile(`${dir}/${f.name}`);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        problems.push(`${dir}/${f.name}: missing`);
        continue;
      }
      throw e;
    }
    if (have === f.text) continue;
    const a = have.split("\n");
    const b = f.text.split("\n");
    let i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    problems.push(
      `${dir}/${f.name}:${i + 1}: differs (have ${a.length - 1} lines, prepared ${
        b.length - 1
      }): ` +
        `have ${JSON.stringify((a[i] ?? "").slice(0, 120))}, prepared ${
          JSON.stringify((b[i] ?? "").slice(0, 120))
        }`,
    );
  }
  return problems;
}
