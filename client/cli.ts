/**
 * Command-line client for the PromptLearning service.
 *
 *   deno run -A client/cli.ts [--address 127.0.0.1:50051] [--token T | --token-file F]
 *                             [--tls-ca ca.pem | --tls] <command> ...
 *
 * Commands
 *   train <config.yaml> [--train-records a.jsonl] [--validation-records b.jsonl] [--json]
 *       Submits a NeMo-style config; a progress bar (step, loss, tokens/s, ETA) follows the event
 *       stream. Ctrl-C cancels the job. Prints the task versions written as JSON.
 *   watch <job-id> [--after N] [--json]     Follows a job from event N on.
 *   register <name> --template t.json (--table table.json | --peft <adapter dir>) [--create-only]
 *            [--request-id <uuid>]
 *       table.json: [[...hidden floats], ...] one row per virtual token. Each invocation sends
 *       one request id (a new UUID unless --request-id names one), so its retries after a dropped
 *       connection never write a second version; when the outcome stays unknown it prints the id,
 *       and running again with --request-id <it> registers at most once.
 *   infer [requests.jsonl | -] [--batch 64]  JSONL in (one request a line), JSONL out, in order.
 *       {"task": "sentiment", "fields": {"sentence": "..."}, "max_new_tokens": 4,
 *        "sampling": {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 1}, "stop": ["\n"],
 *        "return_logprobs": true, "version": 2, "min_new_tokens": 1, "repetition_penalty": 1.1}
 *       "choices": ["positive", "negative"] ranks candidate answers (each line then carries
 *       "choices": [{"text", "logprob", "probability", ...}]); "allowed": [...] keeps generation to
 *       those answers.
 *   evaluate <task> (--data file.jsonl,... | --records records.jsonl) [--labels a,b,c]
 *            [--metric exact_match|squad|intent_slot] [--version N] [--max-new N] [--json]
 *            [--squad-gold raw.json (under the server's DATA_DIR: every gold answer)]
 *       Starts an evaluation job on the server (data files are paths under its DATA_DIR; records
 *       are read here and sent) and follows it; prints the evaluation kept with the version.
 *   tasks [get <name> [--version N] | delete <name>]
 *   jobs [get <id> | cancel <id>]
 *   health
 *
 * AUTH_TOKEN in the environment is used when no --token/--token-file is given.
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import {
  type InferRequest,
  PromptLearningClient,
  type RegisterTaskRequest,
  RpcCallError,
  type Task,
  type TrainEvent,
  type TrainRequest,
} from "./client.ts";
import type { TaskTemplate } from "../proto/gen/promptlearning/v1/TaskTemplate.ts";

const FLAGS = [
  "address",
  "token",
  "token-file",
  "tls-ca",
  "after",
  "template",
  "table",
  "peft",
  "version",
  "batch",
  "page-size",
  "train-records",
  "validation-records",
  "request-id",
  "data",
  "records",
  "labels",
  "metric",
  "max-new",
  "squad-gold",
];
const BOOLEANS = ["tls", "json", "create-only", "help"];

const enc = new TextEncoder();
/** JSON without proto-loader's virtual oneof markers (`_version: "version"`). */
const toJson = (v: unknown) =>
  JSON.stringify(v, (k, x) => (k.startsWith("_") && typeof x === "string" ? undefined : x));
const write = (s: string) => Deno.stdout.writeSync(enc.encode(s));
const status = (s: string) => Deno.stderr.writeSync(enc.encode(s));

function fmtSeconds(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const m = Math.floor(s / 60), sec = Math.round(s % 60);
  return m > 0 ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
}

/** One line of progress for a step event (the bar is 24 cells wide). */
export function progressLine(step: NonNullable<TrainEvent["step"]>): string {
  const total = step.totalSteps > 0 ? step.totalSteps : 0;
  const frac = total ? Math.min(1, step.step / total) : 0;
  const filled = Math.round(frac * 24);
  const bar = "#".repeat(filled) + ".".repeat(24 - filled);
  return `[${bar}] step ${step.step}/${total || "?"} epoch ${step.epoch} loss ${
    step.loss.toFixed(4)
  } lr ${step.learningRate.toExponential(2)} ${Math.round(step.tokensPerSecond)} tok/s ETA ${
    fmtSeconds(step.etaSeconds)
  }`;
}

/** Renders a job's events: a progress bar on stderr (or JSON lines on stdout with --json). */
async function follow(events: AsyncIterable<TrainEvent>, json: boolean): Promise<number> {
  const tty = Deno.stderr.isTerminal();
  let code = 0;
  for await (const e of events) {
    if (json) {
      write(toJson(e) + "\n");
    }
    switch (e.event) {
      case "queued":
        if (!json) status(`job ${e.jobId} queued (position ${e.queued!.position})\n`);
        break;
      case "started":
        if (!json) {
          status(
            `job ${e.jobId} started: ${e.started!.tasks.join(", ")}, ${
              e.started!.totalSteps
            } steps\n`,
          );
        }
        break;
      case "step":
        if (!json) status(tty ? `\r${progressLine(e.step!)}\x1b[K` : `${progressLine(e.step!)}\n`);
        break;
      case "validation": {
        if (json) break;
        const parts = Object.entries(e.validation!.metrics).map(([task, m]) =>
          `${task}: ` +
          Object.entries(m.values).map(([k, v]) => `${k}=${v.toFixed(4)}`).join(" ")
        );
        status(`${tty ? "\n" : ""}validation @${e.validation!.step}: ${parts.join("; ")}\n`);
        break;
      }
      case "checkpoint":
        break;
      case "evaluating": {
        if (json) break;
        const p = e.evaluating!;
        const line = `evaluating ${p.task} v${p.version}: ${p.done}/${p.total}`;
        status(tty ? `\r${line}\x1b[K` : `${line}\n`);
        break;
      }
      case "completed":
        if (!json) {
          status(`${tty ? "\n" : ""}completed\n`);
          write(JSON.stringify({ job_id: e.jobId, written: e.completed!.written }) + "\n");
        }
        break;
      case "failed":
        if (!json) status(`${tty ? "\n" : ""}failed: ${e.failed!.reason}\n`);
        code = 1;
        break;
      case "cancelled":
        if (!json) status(`${tty ? "\n" : ""}cancelled ${e.cancelled!.reason}\n`);
        code = 1;
        break;
    }
  }
  return code;
}

async function readRecords(path: string | undefined) {
  if (!path) return undefined;
  const lines = (await Deno.readTextFile(path)).split("\n").filter((l) => l.trim());
  return {
    records: lines.map((l, i) => {
      let obj: Record<string, unknown>;
      try {
        obj = JSON.parse(l);
      } catch (e) {
        throw new RangeError(`${path}:${i + 1}: not JSON: ${(e as Error).message}`);
      }
      return {
        fields: Object.fromEntries(
          Object.entries(obj).map(([k, v]) => [k, { stringValue: String(v) }]),
        ),
      };
    }),
  };
}

/** NeMo's snake_case template keys to the proto message. */
export function templateFromJson(t: Record<string, unknown>): TaskTemplate {
  const out: TaskTemplate = {};
  const str = (k: string) => (typeof t[k] === "string" ? t[k] as string : undefined);
  const num = (k: string) => (typeof t[k] === "number" ? t[k] as number : undefined);
  const bool = (k: string) => (typeof t[k] === "boolean" ? t[k] as boolean : undefined);
  if (str("taskname")) out.taskname = str("taskname");
  if (str("prompt_template")) out.promptTemplate = str("prompt_template");
  if (Array.isArray(t.prompt_template_fields)) {
    out.promptTemplateFields = t.prompt_template_fields as string[];
  }
  if (num("total_virtual_tokens") !== undefined) {
    out.totalVirtualTokens = num("total_virtual_tokens");
  }
  if (Array.isArray(t.virtual_token_splits)) {
    out.virtualTokenSplits = t.virtual_token_splits as number[];
  }
  if (str("truncate_field") !== undefined) out.truncateField = str("truncate_field");
  if (str("answer_field")) out.answerField = str("answer_field");
  for (
    const [k, p] of [["answer_only_loss", "answerOnlyLoss"], ["add_bos", "addBos"], [
      "add_eos",
      "addEos",
    ]] as const
  ) {
    if (bool(k) !== undefined) out[p] = bool(k);
  }
  if (num("max_seq_length") !== undefined) out.maxSeqLength = num("max_seq_length");
  if (num("min_seq_length") !== undefined) out.minSeqLength = num("min_seq_length");
  return out;
}

/** One JSONL request (snake_case, as the proto names it) to the client's message. */
export function inferRequestFromJson(o: Record<string, unknown>, where: string): InferRequest {
  if (typeof o.task !== "string") throw new RangeError(`${where}: "task" must be a string`);
  const r: InferRequest = { task: o.task, fields: {} };
  if (o.fields !== undefined) {
    if (typeof o.fields !== "object" || o.fields === null) {
      throw new RangeError(`${where}: "fields" must be an object of strings`);
    }
    r.fields = Object.fromEntries(
      Object.entries(o.fields as Record<string, unknown>).map(([k, v]) => [k, String(v)]),
    );
  }
  if (typeof o.version === "number") r.version = o.version;
  if (typeof o.max_new_tokens === "number") r.maxNewTokens = o.max_new_tokens;
  if (typeof o.min_new_tokens === "number") r.minNewTokens = o.min_new_tokens;
  if (typeof o.repetition_penalty === "number") r.repetitionPenalty = o.repetition_penalty;
  if (Array.isArray(o.stop)) r.stop = o.stop.map(String);
  if (o.return_logprobs === true) r.returnLogprobs = true;
  for (const key of ["choices", "allowed"] as const) {
    const v = o[key];
    if (v === undefined) continue;
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) {
      throw new RangeError(`${where}: "${key}" must be a list of strings`);
    }
    r[key] = v as string[];
  }
  const s = o.sampling;
  if (s && typeof s === "object") {
    const x = s as Record<string, number>;
    r.sampling = {
      random: {
        temperature: x.temperature ?? 1,
        topK: x.top_k ?? 0,
        topP: x.top_p ?? 0,
        ...(x.seed !== undefined ? { seed: x.seed } : {}),
      },
    };
  } else if (s === "greedy" || s === undefined) {
    r.sampling = { greedy: {} };
  }
  return r;
}

/** Statuses after which a call may or may not have taken effect. */
const OUTCOME_UNKNOWN = new Set(["UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "INTERNAL"]);

/**
 * RegisterTask, tried again (with the same request id, so at most one version is written) while
 * the service is unavailable. When the outcome stays unknown, says how to retry safely.
 */
async function registerWithRetries(
  client: PromptLearningClient,
  req: RegisterTaskRequest & { requestId: string },
): Promise<Task> {
  for (let attempt = 1;; attempt++) {
    try {
      return await client.registerTask(req);
    } catch (e) {
      if (!(e instanceof RpcCallError)) throw e;
      if (e.codeName === "UNAVAILABLE" && attempt < 3) {
        await new Promise((r) => setTimeout(r, 500 * attempt));
        continue;
      }
      if (OUTCOME_UNKNOWN.has(e.codeName)) {
        status(
          `register: it is not known whether ${req.name} was registered; run the same command ` +
            `with --request-id ${req.requestId} to register it at most once\n`,
        );
      }
      throw e;
    }
  }
}

async function readStdinOrFile(path: string | undefined): Promise<string> {
  if (path && path !== "-") return await Deno.readTextFile(path);
  return await new Response(Deno.stdin.readable).text();
}

async function main(argv: string[]): Promise<number> {
  // node:util's parser: unknown flags and a flag without its value are errors naming the flag.
  const parsed = parseArgs({
    args: argv,
    allowPositionals: true,
    options: Object.fromEntries([
      ...FLAGS.map((f) => [f, { type: "string" as const }]),
      ...BOOLEANS.map((f) => [f, { type: "boolean" as const }]),
    ]),
  });
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const args = { flags: new Set(Object.keys(values).filter((k) => values[k] !== undefined)) };
  const flag = (n: string) => {
    const v = values[n];
    return typeof v === "string" ? v : undefined;
  };
  const [cmd, ...rest] = parsed.positionals;
  if (!cmd || args.flags.has("help")) {
    const doc = await Deno.readTextFile(new URL(import.meta.url));
    status(/\/\*\*([\s\S]*?)\*\//.exec(doc)![1].replace(/^ \* ?/gm, "") + "\n");
    return cmd ? 0 : 2;
  }
  const tokenFile = flag("token-file");
  const token = flag("token") ??
    (tokenFile ? (await Deno.readTextFile(tokenFile)).trim() : Deno.env.get("AUTH_TOKEN"));
  const ca = flag("tls-ca");
  const client = new PromptLearningClient({
    address: flag("address") ?? "127.0.0.1:50051",
    token: token || undefined,
    tls: ca ? await Deno.readTextFile(ca) : args.flags.has("tls") ? true : undefined,
  });
  const json = args.flags.has("json");
  try {
    switch (cmd) {
      case "train": {
        if (!rest[0]) throw new RangeError("train needs a config file: train <config.yaml>");
        const req: TrainRequest = {
          configYaml: await Deno.readTextFile(rest[0]),
          extraTrainRecords: await readRecords(flag("train-records")),
          extraValidationRecords: await readRecords(flag("validation-records")),
        };
        const ac = new AbortController();
        let jobId = "";
        const onInt = () => {
          if (jobId) {
            status(`\ncancelling ${jobId}\n`);
            client.cancelJob(jobId).finally(() => ac.abort());
          } else ac.abort();
        };
        Deno.addSignalListener("SIGINT", onInt);
        try {
          const events = client.train(req, { signal: ac.signal });
          return await follow(
            (async function* () {
              for await (const e of events) {
                jobId = e.jobId;
                yield e;
              }
            })(),
            json,
          );
        } finally {
          Deno.removeSignalListener("SIGINT", onInt);
        }
      }
      case "evaluate": {
        const task = rest[0];
        if (!task) {
          throw new RangeError("evaluate needs a task name: evaluate <task> --data f.jsonl");
        }
        const files = flag("data")?.split(",") ?? [];
        const inline = (await readRecords(flag("records")))?.records ?? [];
        const v = flag("version"), maxNew = flag("max-new");
        let done: TrainEvent | undefined;
        const code = await follow(
          (async function* () {
            for await (
              const e of client.evaluate({
                task,
                ...(v ? { version: Number(v) } : {}),
                data: { files, records: inline },
                labels: flag("labels")?.split(",") ?? [],
                metric: flag("metric") ?? "",
                maxNewTokens: maxNew ? Number(maxNew) : 0,
                squadGold: flag("squad-gold") ?? "",
              })
            ) {
              if (e.event === "completed") done = e;
              yield e;
            }
          })(),
          json,
        );
        const ev = done?.completed?.evaluation;
        if (ev && !json) {
          write(
            JSON.stringify({
              task,
              version: done!.completed!.written[0]?.version,
              examples: ev.examples,
              metrics: ev.metrics,
              ...(ev.labels.length
                ? { labels: ev.labels, confusion: ev.confusion.map((r) => r.predicted) }
                : {}),
            }) + "\n",
          );
        }
        return code;
      }
      case "watch": {
        if (!rest[0]) throw new RangeError("watch needs a job id: watch <job-id> [--after N]");
        return await follow(client.watchJob(rest[0], Number(flag("after") ?? 0)), json);
      }
      case "register": {
        const name = rest[0];
        if (!name) throw new RangeError("register needs a task name");
        const tplPath = flag("template");
        const template = tplPath
          ? templateFromJson(JSON.parse(await Deno.readTextFile(tplPath)))
          : undefined;
        const createOnly = args.flags.has("create-only");
        // One id for every attempt of this invocation: the server writes at most one version.
        const requestId = flag("request-id") ?? crypto.randomUUID();
        const base = { name, template, createOnly, requestId };
        const tablePath = flag("table"), peftDir = flag("peft");
        let req: RegisterTaskRequest & { requestId: string };
        if (tablePath) {
          const rows = JSON.parse(await Deno.readTextFile(tablePath)) as number[][];
          if (!Array.isArray(rows) || !rows.every(Array.isArray)) {
            throw new RangeError(`--table ${tablePath} must hold a JSON array of rows`);
          }
          req = {
            ...base,
            table: { rows: rows.length, hidden: rows[0]?.length ?? 0, values: rows.flat() },
          };
        } else if (peftDir) {
          req = {
            ...base,
            peft: {
              adapterConfigJson: Buffer.from(await Deno.readFile(`${peftDir}/adapter_config.json`)),
              adapterSafetensors: Buffer.from(
                await Deno.readFile(`${peftDir}/adapter_model.safetensors`),
              ),
            },
          };
        } else {
          throw new RangeError("register needs --table <file> or --peft <adapter dir>");
        }
        const task = await registerWithRetries(client, req);
        write(toJson(task) + "\n");
        return 0;
      }
      case "infer": {
        const batch = Number(flag("batch") ?? 64);
        const lines = (await readStdinOrFile(rest[0])).split("\n");
        const reqs: InferRequest[] = [];
        lines.forEach((l, i) => {
          if (!l.trim()) return;
          let o: Record<string, unknown>;
          try {
            o = JSON.parse(l);
          } catch (e) {
            throw new RangeError(`line ${i + 1}: not JSON: ${(e as Error).message}`);
          }
          reqs.push(inferRequestFromJson(o, `line ${i + 1}`));
        });
        let failed = 0;
        for (let at = 0; at < reqs.length; at += batch) {
          for (const r of await client.infer(reqs.slice(at, at + batch))) {
            if (r.completion) {
              const c = r.completion;
              write(
                JSON.stringify({
                  text: c.text,
                  token_ids: c.tokenIds,
                  finish_reason: c.finishReason.replace("FINISH_REASON_", "").toLowerCase(),
                  task_version: c.taskVersion,
                  ...(c.choices.length
                    ? {
                      choices: c.choices.map((x) => ({
                        text: x.text,
                        logprob: x.logprob,
                        logprob_per_token: x.logprobPerToken,
                        probability: x.probability,
                      })),
                    }
                    : {}),
                  ...(c.logprobs.length
                    ? {
                      logprobs: c.logprobs.map((l) => ({
                        token_id: l.tokenId,
                        text: l.text,
                        logprob: l.logprob,
                      })),
                    }
                    : {}),
                }) + "\n",
              );
            } else {
              failed++;
              write(JSON.stringify({ error: r.error }) + "\n");
            }
          }
        }
        return failed ? 1 : 0;
      }
      case "tasks": {
        if (rest[0] === "get") {
          const v = flag("version");
          write(toJson(await client.getTask(rest[1], v ? Number(v) : undefined)) + "\n");
          return 0;
        }
        if (rest[0] === "delete") {
          write(JSON.stringify(await client.deleteTask(rest[1])) + "\n");
          return 0;
        }
        let pageToken = "";
        do {
          const page = await client.listTasks({
            pageSize: Number(flag("page-size") ?? 100),
            pageToken,
          });
          for (const t of page.tasks) {
            write(
              json
                ? toJson(t) + "\n"
                : `${t.name}\tv${t.version}\t${t.totalVirtualTokens} virtual tokens\t${t.source}\n`,
            );
          }
          pageToken = page.nextPageToken;
        } while (pageToken);
        return 0;
      }
      case "jobs": {
        if (rest[0] === "get" || rest[0] === "cancel") {
          const job = rest[0] === "get"
            ? await client.getJob(rest[1])
            : await client.cancelJob(rest[1]);
          write(toJson(job) + "\n");
          return 0;
        }
        let pageToken = "";
        do {
          const page = await client.listJobs({ pageSize: 100, pageToken });
          for (const j of page.jobs) {
            write(
              json
                ? toJson(j) + "\n"
                : `${j.jobId}\t${j.state.replace("JOB_STATE_", "")}\t${
                  j.tasks.join(",")
                }\tstep ${j.step}/${j.totalSteps}\n`,
            );
          }
          pageToken = page.nextPageToken;
        } while (pageToken);
        return 0;
      }
      case "health":
        write((await client.health(rest[0] ?? "")) + "\n");
        return 0;
      default:
        throw new RangeError(
          `unknown command ${
            JSON.stringify(cmd)
          }: expected train, watch, register, infer, tasks, jobs or health`,
        );
    }
  } finally {
    client.close();
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    status(`error: ${e instanceof RpcCallError ? e.message : (e as Error).message}\n`);
    Deno.exit(e instanceof RpcCallError ? 3 : 2);
  }
}
