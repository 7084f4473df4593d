/**
 * PEFT prompt-learning adapters: `adapter_config.json` + `adapter_model.safetensors`, whose tensor
 * `prompt_embeddings` [num_virtual_tokens, token_dim] is the materialised soft prompt. PEFT saves
 * that tensor for both PROMPT_TUNING and P_TUNING (the encoder is run before saving), so both
 * import as a plain table, and export always writes PROMPT_TUNING, which PEFT loads as is.
 * The encoder is therefore never part of an adapter: a version p-tuned with any encoder kind
 * (PEFT's lstm and peft_mlp, or NeMo's tpmlp and mlp, which PEFT lacks) exports exactly, and an
 * imported P_TUNING adapter carries no encoder state.
 */
import { diskFull, invalidArgument } from "../errors.ts";
import { join } from "node:path";
import { encodeSafetensors, parseSafetensors, readFloat32 } from "../model/safetensors.ts";
import { validateTemplate } from "../prompts/template.ts";
import type { TaskTemplate } from "../prompts/template_types.ts";
import { parseJsonObject } from "../util/json.ts";
import { syncDir, writeFileDurable } from "../util/durable_fs.ts";
import { validateTaskName } from "./names.ts";
import type { ModelFingerprint, TaskDraft, TaskVersion } from "./types.ts";

export const PEFT_CONFIG_FILE = "adapter_config.json";
export const PEFT_WEIGHTS_FILE = "adapter_model.safetensors";
const TENSOR = "prompt_embeddings";
const MARKER = /<\|VIRTUAL_PROMPT_(\d+)\|>/g;
const FIELD = /\{([A-Za-z_][A-Za-z0-9_]*)\}/g;

/** An adapter's two files, already in memory. */
export interface PeftAdapterFiles {
  configJson: string;
  safetensorsBytes: Uint8Array;
  /** Names the adapter in errors (its directory, a URL...). Default: "adapter". */
  where?: string;
}

export interface PeftImportOptions {
  /** Task name; becomes `template.taskname`. */
  name: string;
  /** The model the table will be served on: `token_dim` must equal its hidden size. */
  fingerprint: ModelFingerprint;
  /**
   * The text the virtual tokens go with. PEFT puts them before the input, so when the text has no
   * `<|VIRTUAL_PROMPT_0|>` marker one is prepended. Default: "{prompt}{completion}".
   */
  promptTemplate?: string;
  /** Further template settings; NeMo's defaults otherwise (answer_field: the last field). */
  template?: Partial<
    Omit<
      TaskTemplate,
      | "taskname"
      | "prompt_template"
      | "prompt_template_fields"
      | "total_virtual_tokens"
      | "virtual_token_splits"
    >
  >;
  /** Default: {}. */
  metrics?: Record<string, number>;
}

/** The PEFT config fields that a prompt-tuning adapter needs. */
export interface PeftAdapterInfo {
  peftType: "PROMPT_TUNING" | "P_TUNING";
  numVirtualTokens: number;
  tokenDim: number;
  /** The raw adapter_config.json, for callers that want to keep more of it. */
  config: Record<string, unknown>;
}

function parseConfig(text: string, file: string, hiddenSize: number): PeftAdapterInfo {
  const c = parseJsonObject(text, file);
  if (c.peft_type !== "PROMPT_TUNING" && c.peft_type !== "P_TUNING") {
    throw invalidArgument(
      `${file}: peft_type must be "PROMPT_TUNING" or "P_TUNING": found ${
        JSON.stringify(c.peft_type)
      }`,
    );
  }
  if (c.task_type !== "CAUSAL_LM") {
    throw invalidArgument(
      `${file}: task_type must be "CAUSAL_LM" (a GPT-2 decoder): found ${
        JSON.stringify(c.task_type)
      }`,
    );
  }
  const posInt = (key: string): number => {
    const v = c[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
      throw invalidArgument(
        `${file}: ${key} must be a positive integer: found ${JSON.stringify(v)}`,
      );
    }
    return v;
  };
  const numVirtualTokens = posInt("num_virtual_tokens");
  const tokenDim = posInt("token_dim");
  if (tokenDim !== hiddenSize) {
    throw invalidArgument(
      `${file}: token_dim (${tokenDim}) must equal the model's hidden size (${hiddenSize})`,
    );
  }
  const subs = c.num_transformer_submodules;
  if (subs !== undefined && subs !== null && subs !== 1) {
    throw invalidArgument(
      `${file}: num_transformer_submodules must be 1 for a decoder-only model: found ${
        JSON.stringify(subs)
      }`,
    );
  }
  return { peftType: c.peft_type, numVirtualTokens, tokenDim, config: c };
}

/** The adapter's table [num_virtual_tokens, token_dim] as float32, with every check applied. */
function readTable(bytes: Uint8Array, file: string, info: PeftAdapterInfo): Float32Array {
  const st = parseSafetensors(bytes, file);
  const t = st.tensors.get(TENSOR);
  if (!t) {
    throw invalidArgument(
      `${file}: no tensor "${TENSOR}": found ${JSON.stringify([...st.tensors.keys()])}`,
    );
  }
  if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") {
    throw invalidArgument(`${file}: tensor "${TENSOR}" must be F32, F16 or BF16: found ${t.dtype}`);
  }
  const expected = [info.numVirtualTokens, info.tokenDim];
  if (t.shape.length !== 2 || t.shape[0] !== expected[0] || t.shape[1] !== expected[1]) {
    throw invalidArgument(
      `${file}: tensor "${TENSOR}" has shape ${JSON.stringify(t.shape)}: expected ${
        JSON.stringify(expected)
      } (num_virtual_tokens x token_dim from ${PEFT_CONFIG_FILE})`,
    );
  }
  const table = readFloat32(st, TENSOR);
  for (let i = 0; i < table.length; i++) {
    if (!Number.isFinite(table[i])) {
      throw invalidArgument(
        `${file}: tensor "${TENSOR}" has ${table[i]} at [${Math.floor(i / info.tokenDim)}, ${
          i % info.tokenDim
        }]: expected finite values`,
      );
    }
  }
  return table;
}

function buildTemplate(opts: PeftImportOptions, total: number, where: string): TaskTemplate {
  let text = opts.promptTemplate ?? "{prompt}{completion}";
  if (typeof text !== "string") {
    throw invalidArgument(`promptTemplate must be a string: found ${JSON.stringify(text)}`);
  }
  const markers = [...text.matchAll(MARKER)].map((m) => m[0]);
  if (markers.length === 0) text = `<|VIRTUAL_PROMPT_0|>${text}`;
  else if (markers.length !== 1 || markers[0] !== "<|VIRTUAL_PROMPT_0|>") {
    throw invalidArgument(
      `promptTemplate must hold one <|VIRTUAL_PROMPT_0|> marker (a PEFT adapter is one block of ` +
        `virtual tokens): found ${JSON.stringify(markers)}`,
    );
  }
  const fields = [...new Set([...text.matchAll(FIELD)].map((m) => m[1]))];
  if (fields.length === 0) {
    throw invalidArgument(
      `promptTemplate must name at least the answer field in braces, e.g. "{completion}": found ${
        JSON.stringify(text)
      }`,
    );
  }
  return validateTemplate({
    ...opts.template,
    taskname: opts.name,
    prompt_template: text,
    prompt_template_fields: fields,
    total_virtual_tokens: total,
    virtual_token_splits: [total],
  }, `${where}: template`);
}

/** Builds a draft from an adapter's files; see `importPeftAdapter`. */
export function parsePeftAdapter(files: PeftAdapterFiles, opts: PeftImportOptions): TaskDraft {
  validateTaskName(opts?.name, "name");
  const where = files.where ?? "adapter";
  const hidden = opts.fingerprint?.hiddenSize;
  if (!Number.isSafeInteger(hidden) || hidden < 1) {
    throw invalidArgument(
      `fingerprint.hiddenSize must be a positive integer: found ${JSON.stringify(hidden)}`,
    );
  }
  if (typeof files.configJson !== "string") {
    throw invalidArgument(`${where}: configJson must be a string`);
  }
  if (!(files.safetensorsBytes instanceof Uint8Array)) {
    throw invalidArgument(`${where}: safetensorsBytes must be a Uint8Array`);
  }
  const info = parseConfig(files.configJson, join(where, PEFT_CONFIG_FILE), hidden);
  const table = readTable(files.safetensorsBytes, join(where, PEFT_WEIGHTS_FILE), info);
  return {
    template: buildTemplate(opts, info.numVirtualTokens, where),
    totalVirtualTokens: info.numVirtualTokens,
    hiddenSize: info.tokenDim,
    table,
    fingerprint: { ...opts.fingerprint },
    metrics: { ...opts.metrics },
    source: "peft_import",
  };
}

async function readAdapterFile(dir: string, file: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(join(dir, file));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    let hint = "";
    if (file === PEFT_WEIGHTS_FILE) {
      try {
        await Deno.stat(join(dir, "adapter_model.bin"));
        hint = ": found adapter_model.bin (a PyTorch pickle, not read here); save the adapter " +
          "with safe_serialization=True";
      } catch {
        // No .bin either: the plain "missing" message says it all.
      }
    }
    throw new Deno.errors.NotFound(`${join(dir, file)}: missing${hint}`);
  }
}

/**
 * Reads a PEFT PROMPT_TUNING or P_TUNING adapter (a directory, or its two files in memory) into a
 * draft for `TaskStore.put(opts.name, draft)`. Checks that token_dim equals the model's hidden size
 * and that `prompt_embeddings` is [num_virtual_tokens, token_dim]; any float dtype is widened to
 * float32. Errors name the file and the key.
 */
export async function importPeftAdapter(
  source: string | PeftAdapterFiles,
  opts: PeftImportOptions,
): Promise<TaskDraft> {
  if (typeof source !== "string") return parsePeftAdapter(source, opts);
  const [config, weights] = await Promise.all([
    readAdapterFile(source, PEFT_CONFIG_FILE),
    readAdapterFile(source, PEFT_WEIGHTS_FILE),
  ]);
  return parsePeftAdapter({
    configJson: new TextDecoder().decode(config),
    safetensorsBytes: weights,
    where: source,
  }, opts);
}

export interface PeftExportOptions {
  /** `base_model_name_or_path`. Default: null. */
  baseModelNameOrPath?: string | null;
  /** `tokenizer_name_or_path`. Default: null. */
  tokenizerNameOrPath?: string | null;
  /** `num_layers` / `num_attention_heads` of the base model; PEFT fills nulls from the model. */
  numLayers?: number | null;
  numAttentionHeads?: number | null;
  /** `prompt_tuning_init`: how the table started. Default: "RANDOM". */
  promptTuningInit?: "RANDOM" | "TEXT" | "SAMPLE_VOCAB";
  /** `prompt_tuning_init_text` (with "TEXT"). Default: null. */
  promptTuningInitText?: string | null;
}

/** The two files of a PROMPT_TUNING adapter for `version`, byte for byte as PEFT 0.21 saves them. */
export function encodePeftAdapter(
  version: Pick<TaskVersion, "table" | "totalVirtualTokens" | "hiddenSize">,
  opts: PeftExportOptions = {},
): { configJson: string; safetensorsBytes: Uint8Array } {
  const { table, totalVirtualTokens: n, hiddenSize: h } = version;
  if (!(table instanceof Float32Array) || table.length !== n * h) {
    throw invalidArgument(
      `version.table must be a Float32Array of ${n} x ${h} = ${
        n * h
      } values: found ${table?.length}`,
    );
  }
  const init = opts.promptTuningInit ?? "RANDOM";
  if (!["RANDOM", "TEXT", "SAMPLE_VOCAB"].includes(init)) {
    throw invalidArgument(
      `promptTuningInit must be "RANDOM", "TEXT" or "SAMPLE_VOCAB": found ${JSON.stringify(init)}`,
    );
  }
  // Keys sorted and indented by 2, as PEFT's save_pretrained (json.dumps(sort_keys=True)) writes.
  const config = {
    auto_mapping: null,
    base_model_name_or_path: opts.baseModelNameOrPath ?? null,
    inference_mode: true,
    modules_to_save: null,
    num_attention_heads: opts.numAttentionHeads ?? null,
    num_layers: opts.numLayers ?? null,
    num_transformer_submodules: 1,
    num_virtual_tokens: n,
    peft_type: "PROMPT_TUNING",
    peft_version: "0.21.0",
    prompt_tuning_init: init,
    prompt_tuning_init_text: opts.promptTuningInitText ?? null,
    revision: null,
    task_type: "CAUSAL_LM",
    token_dim: h,
    tokenizer_kwargs: null,
    tokenizer_name_or_path: opts.tokenizerNameOrPath ?? null,
  };
  return {
    configJson: JSON.stringify(config, null, 2),
    safetensorsBytes: encodeSafetensors(
      { [TENSOR]: { dtype: "F32", shape: [n, h], data: table } },
      { format: "pt" },
    ),
  };
}

/**
 * Writes `version` as a PEFT PROMPT_TUNING adapter into `dir` (created if needed), replacing any
 * adapter there. Each file is written under a temporary name, fsynced and renamed into place.
 */
export async function exportPeftAdapter(
  version: Pick<TaskVersion, "table" | "totalVirtualTokens" | "hiddenSize">,
  dir: string,
  opts: PeftExportOptions = {},
): Promise<void> {
  const files = encodePeftAdapter(version, opts);
  await Deno.mkdir(dir, { recursive: true });
  const writes: [string, Uint8Array][] = [
    [PEFT_WEIGHTS_FILE, files.safetensorsBytes],
    [PEFT_CONFIG_FILE, new TextEncoder().encode(files.configJson)],
  ];
  for (const [file, bytes] of writes) {
    const tmp = join(dir, `.${file}.${crypto.randomUUID()}.tmp`);
    try {
      await writeFileDurable(tmp, bytes);
      await Deno.rename(tmp, join(dir, file));
    } catch (e) {
      await Deno.remove(tmp).catch(() => {}); // Best effort: the write error is what matters.
      throw diskFull(e, "the export directory");
    }
  }
  await syncDir(dir);
}
