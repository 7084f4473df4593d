/**
 * A training run's export (NeMo's `model.nemo_path`): one tar archive, as a `.nemo` file is, that
 * holds the run's configuration and, per new task, its template and its materialised prompt table
 * as a PEFT PROMPT_TUNING adapter (what NeMo's final .nemo keeps: the tables, not the encoder).
 * `deno task peft import` reads each task's adapter back.
 */
import { dirname, join } from "node:path";
import { encodeTar, type TarEntry } from "../util/tar.ts";
import { writeFileDurable } from "../util/durable_fs.ts";
import { diskFull } from "../errors.ts";
import { encodePeftAdapter, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE } from "./peft.ts";
import type { TaskDraft } from "./types.ts";

export interface TaskArchive {
  /** The run's configuration as YAML (`model_config.yaml`, as in a .nemo). */
  configYaml: string;
  tasks: {
    task: string;
    draft: Pick<TaskDraft, "template" | "table" | "totalVirtualTokens" | "hiddenSize">;
  }[];
}

export function encodeTaskArchive(a: TaskArchive): Uint8Array {
  const enc = new TextEncoder();
  const entries: TarEntry[] = [{ name: "model_config.yaml", data: enc.encode(a.configYaml) }];
  for (const { task, draft } of a.tasks) {
    const peft = encodePeftAdapter(draft);
    entries.push(
      {
        name: `tasks/${task}/template.json`,
        data: enc.encode(JSON.stringify(draft.template, null, 2)),
      },
      { name: `tasks/${task}/${PEFT_CONFIG_FILE}`, data: enc.encode(peft.configJson) },
      { name: `tasks/${task}/${PEFT_WEIGHTS_FILE}`, data: peft.safetensorsBytes },
    );
  }
  return encodeTar(entries, Math.floor(Date.now() / 1000));
}

/** Writes the archive at `path` whole or not at all (temporary file, fsync, rename). */
export async function writeTaskArchive(path: string, a: TaskArchive): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${crypto.randomUUID()}.tmp`);
  try {
    await writeFileDurable(tmp, encodeTaskArchive(a));
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {}); // Best effort: the write error is what matters.
    throw diskFull(e, "model.nemo_path's disk");
  }
}
