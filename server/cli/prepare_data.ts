/**
 * `deno task prepare-data --raw data/raw --out data/prepared [--check data/splits]`: rebuilds the
 * canonical train/val/test splits of the three tutorial datasets from their raw sources (data/splits:
 * squad's without the `id` and `title` keys of ../shared's canonical files, see data/README.md).
 */
import {
  compareSplits,
  type PreparedTask,
  prepareSplits,
  TASKS,
  writeSplits,
} from "../prompts/prepare_data.ts";

const USAGE = "usage: deno task prepare-data --raw <raw dir> --out <out dir> " +
  "[--check <splits dir>] [--tasks sentiment,intent_and_slot,squad]";

export interface PrepareArgs {
  raw: string;
  out?: string;
  check?: string;
  tasks: PreparedTask[];
}

/** Parses `--name value` / `--name=value` arguments; throws with the usage on anything else. */
export function parsePrepareArgs(args: readonly string[]): PrepareArgs {
  const values: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const m = /^--(raw|out|check|tasks)(?:=(.*))?$/.exec(args[i]);
    if (!m) throw new TypeError(`unknown argument ${JSON.stringify(args[i])}\n${USAGE}`);
    const value = m[2] ?? args[++i];
    if (value === undefined || value === "") {
      throw new TypeError(`--${m[1]} needs a value\n${USAGE}`);
    }
    values[m[1]] = value;
  }
  if (!values.raw) throw new TypeError(`--raw is required\n${USAGE}`);
  if (!values.out && !values.check) throw new TypeError(`give --out, --check or both\n${USAGE}`);
  const tasks = (values.tasks ?? TASKS.join(",")).split(",").map((t) => {
    if (!(TASKS as readonly string[]).includes(t)) {
      throw new RangeError(
        `--tasks: unknown task ${JSON.stringify(t)}: expected ${TASKS.join(", ")}`,
      );
    }
    return t as PreparedTask;
  });
  return { raw: values.raw, out: values.out, check: values.check, tasks };
}

async function main(args: string[]): Promise<number> {
  let parsed: PrepareArgs;
  try {
    parsed = parsePrepareArgs(args);
  } catch (e) {
    console.error((e as Error).message);
    return 2;
  }
  const files = await prepareSplits(parsed.raw, parsed.tasks);
  if (parsed.out) {
    await writeSplits(files, parsed.out);
    for (const f of files) console.log(`${parsed.out}/${f.name}: ${f.records} records`);
  }
  if (parsed.check) {
    const problems = await compareSplits(files, parsed.check);
    for (const p of problems) console.error(p);
    if (problems.length > 0) return 1;
    console.log(`${parsed.check}: all ${files.length} files match byte for byte`);
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
