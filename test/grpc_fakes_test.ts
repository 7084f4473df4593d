/**
 * TEST DOUBLES: small in-memory implementations of `ServicePorts` for the gRPC tests. They are not
 * the domain; they only behave enough like it to exercise the protocol layer.
 *
 * Run as a program, this file serves the fakes (used by the subprocess, soak and Python tests):
 *   deno run -A test/grpc_fakes_test.ts [--port 0] [--token T] [--no-filter]
 * It prints `LISTENING <port>` once bound and shuts down on SIGTERM or when stdin closes.
 */
import { createGrpcServer } from "../server/rpc/server.ts";
import {
  type InferInput,
  type InferOutcome,
  type InferOutput,
  type InferStreamItem,
  type JobView,
  type Page,
  type PageRequest,
  PortError,
  type RegisterTaskInput,
  type ServicePorts,
  type TaskView,
  type TrainEvent,
  type TrainEventBody,
  type TrainSubmission,
} from "../server/rpc/ports.ts";
import type { TaskTemplate } from "../server/prompts/template_types.ts";

/** What the fakes saw, for assertions. */
export interface FakeLog {
  submissions: TrainSubmission[];
  registered: RegisterTaskInput[];
  inferBatches: InferInput[][];
  /** Reasons of signals that aborted while a fake was waiting on them. */
  aborts: string[];
}

function page<T>(all: T[], p: PageRequest): Page<T> {
  const start = p.pageToken ? Number(p.pageToken) : 0;
  if (!Number.isInteger(start) || start < 0) {
    throw new PortError("invalid_argument", `page_token is not valid: ${p.pageToken}`);
  }
  const items = all.slice(start, start + p.pageSize);
  const next = start + p.pageSize < all.length ? String(start + p.pageSize) : "";
  return { items, nextPageToken: next };
}

function waitAbort(signal: AbortSignal, log: FakeLog): Promise<never> {
  return new Promise((_, reject) => {
    const onAbort = () => {
      const r = signal.reason;
      log.aborts.push(r instanceof Error ? r.name : String(r));
      reject(r);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
}

const TEMPLATE: TaskTemplate = {
  taskname: "x",
  prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
  prompt_template_fields: ["sentence", "label"],
  total_virtual_tokens: 4,
  virtual_token_splits: [4],
  truncate_field: null,
  answer_field: "label",
  answer_only_loss: true,
  add_bos: false,
  add_eos: true,
  max_seq_length: 256,
  min_seq_length: 1,
};

interface FakeJob {
  view: JobView;
  events: TrainEvent[];
  wake: Set<() => void>;
  /** Resolves the held job (name "hold") when cancelled. */
  cancel?: () => void;
}

/**
 * Fake ports. Training: a job whose config name is "hold" stays running until cancelled; one
 * named "fail" fails; any other completes at once with 3 steps. Inference: the text is the task
 * name and the fields, upper-cased; task "slow" waits for the call's signal; task "missing" is
 * not found.
 */
export function createFakePorts(): { ports: ServicePorts; log: FakeLog } {
  const log: FakeLog = { submissions: [], registered: [], inferBatches: [], aborts: [] };
  const jobs = new Map<string, FakeJob>();
  const tasks = new Map<string, TaskView[]>();
  let jobCounter = 0;
  let clock = Date.UTC(2026, 0, 1);
  const now = () => new Date(clock += 1000);

  const emit = (job: FakeJob, body: TrainEventBody) => {
    job.view.lastSequence++;
    job.events.push({ sequence: job.view.lastSequence, jobId: job.view.id, time: now(), body });
    for (const w of [...job.wake]) w();
  };

  const getJob = (id: string) => {
    const j = jobs.get(id);
    if (!j) throw new PortError("not_found", `job_id ${JSON.stringify(id)} does not exist`);
    return j;
  };

  const getTask = (name: string, version?: number) => {
    const versions = tasks.get(name);
    if (!versions) throw new PortError("not_found", `task ${JSON.stringify(name)} does not exist`);
    const v = version === undefined ? versions.at(-1) : versions.find((t) => t.version === version);
    if (!v) throw new PortError("not_found", `task ${name} has no version ${version}`);
    return { ...v, versions: versions.map((t) => t.version) };
  };

  const output = (req: InferInput, version: number): InferOutput => {
    const words = [req.task, ...Object.values(req.fields)].join(" ").toUpperCase();
    const max = req.options.maxNewTokens ?? 32;
    const tokens = words.split(" ").slice(0, max);
    let text = tokens.join(" ");
    let finishReason: InferOutput["finishReason"] = tokens.length >= max ? "length" : "eos";
    for (const s of req.options.stop) {
      const at = text.indexOf(s);
      if (at >= 0) {
        text = text.slice(0, at);
        finishReason = "stop";
      }
    }
    return {
      text,
      tokenIds: tokens.map((_, i) => 100 + i),
      finishReason,
      ...(req.options.logprobs ? { logprobs: tokens.map(() => -0.5), tokenTexts: tokens } : {}),
      promptTokens: 7,
      version,
    };
  };

  const ports: ServicePorts = {
    training: {
      start(submission) {
        log.submissions.push(submission);
        const src = submission.source;
        const name = src.kind === "yaml"
          ? (/^name:\s*(\S+)/m.exec(src.text)?.[1] ?? "run")
          : String(src.config.name ?? "run");
        if (name === "invalid") {
          return Promise.reject(
            new RangeError("model.new_tasks must name at least one task: found []"),
          );
        }
        const id = `job-${++jobCounter}`;
        const job: FakeJob = {
          view: {
            id,
            state: "queued",
            tasks: ["sentiment"],
            createdAt: now(),
            step: 0,
            totalSteps: 3,
            lastSequence: 0,
            written: [],
          },
          events: [],
          wake: new Set(),
        };
        jobs.set(id, job);
        emit(job, { type: "queued", position: 0 });
        job.view.state = "running";
        job.view.startedAt = now();
        emit(job, { type: "started", totalSteps: 3, totalEpochs: 1, tasks: ["sentiment"] });
        if (name === "hold") {
          job.cancel = () => {
            job.view.state = "cancelled";
            job.view.finishedAt = now();
            emit(job, { type: "cancelled", reason: "cancelled by request" });
          };
        } else if (name === "fail") {
          job.view.state = "failed";
          job.view.error = "loss is NaN at step 1";
          emit(job, { type: "failed", reason: job.view.error });
        } else {
          for (let s = 1; s <= 3; s++) {
            emit(job, {
              type: "step",
              step: s,
              epoch: 0,
              loss: 2 / s,
              learningRate: 1e-3,
              tokensPerSecond: 1000,
              etaSeconds: 3 - s,
              totalSteps: 3,
            });
          }
          emit(job, {
            type: "validation",
            step: 3,
            epoch: 0,
            loss: 0.5,
            metrics: { sentiment: { loss: 0.5, accuracy: 0.8 } },
          });
          emit(job, { type: "checkpoint", step: 3, kind: "best" });
          job.view.state = "succeeded";
          job.view.step = 3;
          job.view.finishedAt = now();
          job.view.written = [{ task: "sentiment", version: 1 }];
          emit(job, {
            type: "completed",
            written: job.view.written,
            metrics: { sentiment: { accuracy: 0.8 } },
          });
        }
        return Promise.resolve({ ...job.view });
      },
      get: (id) => Promise.resolve({ ...getJob(id).view }),
      list: (p) => Promise.resolve(page([...jobs.values()].map((j) => ({ ...j.view })), p)),
      cancel(id) {
        const job = getJob(id);
        job.cancel?.();
        job.cancel = undefined;
        return Promise.resolve({ ...job.view });
      },
      async *events(id, after, signal) {
        const job = getJob(id);
        let next = after;
        while (true) {
          while (next < job.events.length) yield job.events[next++];
          const v = job.view.state;
          if (v === "succeeded" || v === "failed" || v === "cancelled" || signal.aborted) return;
          await new Promise<void>((resolve) => {
            const wake = () => {
              job.wake.delete(wake);
              signal.removeEventListener("abort", wake);
              resolve();
            };
            job.wake.add(wake);
            signal.addEventListener("abort", wake, { once: true });
          });
        }
      },
    },

    tasks: {
      register(input) {
        log.registered.push(input);
        const existing = tasks.get(input.name) ?? [];
        if (input.createOnly && existing.length) {
          return Promise.reject(
            new PortError("already_exists", `task ${JSON.stringify(input.name)} already exists`),
          );
        }
        const rows = input.source.kind === "table" ? input.source.rows : 8;
        const view: TaskView = {
          name: input.name,
          version: existing.length + 1,
          template: { ...TEMPLATE, ...input.template, taskname: input.name },
          totalVirtualTokens: rows,
          hiddenSize: input.source.kind === "table" ? input.source.hidden : 64,
          baseModelFingerprint: "h=64 v=1000 sha256=fake",
          metrics: {},
          createdAt: now(),
          versions: [],
          hasEncoderState: false,
          source: input.source.kind,
        };
        tasks.set(input.name, [...existing, view]);
        return Promise.resolve(getTask(input.name));
      },
      get: (name, version) => Promise.resolve(getTask(name, version)),
      list: (p) => Promise.resolve(page([...tasks.keys()].sort().map((n) => getTask(n)), p)),
      delete(name) {
        const versions = tasks.get(name);
        if (!versions) {
          return Promise.reject(
            new PortError("not_found", `task ${JSON.stringify(name)} does not exist`),
          );
        }
        tasks.delete(name);
        return Promise.resolve({ name, versionsDeleted: versions.map((v) => v.version) });
      },
    },

    inference: {
      async infer(requests, signal): Promise<InferOutcome[]> {
        log.inferBatches.push(requests);
        if (requests.some((r) => r.task === "slow")) await waitAbort(signal, log);
        return requests.map((r): InferOutcome => {
          if (r.task === "missing") {
            return {
              ok: false,
              error: new PortError("not_found", `task "missing" does not exist`),
            };
          }
          if ((r.options.maxNewTokens ?? 0) > 256) {
            return {
              ok: false,
              error: new PortError(
                "invalid_argument",
                `max_new_tokens must be at most 256: found ${r.options.maxNewTokens}`,
              ),
            };
          }
          return { ok: true, result: output(r, r.version ?? 1) };
        });
      },
      async *stream(request, signal): AsyncGenerator<InferStreamItem> {
        if (request.task === "missing") {
          throw new PortError("not_found", `task "missing" does not exist`);
        }
        const out = output(request, request.version ?? 1);
        const words = out.text.split(" ");
        for (const [i, w] of words.entries()) {
          yield { type: "token", tokenId: out.tokenIds[i], text: (i ? " " : "") + w };
        }
        if (request.task === "slow") await waitAbort(signal, log);
        yield { type: "done", result: out };
      },
    },
  };
  return { ports, log };
}

export interface Served {
  port: number;
  proc: Deno.ChildProcess;
  stderr: Promise<string>;
  stop(): Promise<Deno.CommandStatus>;
}

/** The fake-ports server in a Deno subprocess; it exits when its stdin closes. */
export async function spawnFakeServer(args: string[] = []): Promise<Served> {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/LISTENING (\d+)/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server exited before listening: ${text}`);
    text += value;
  }
  const port = Number(/LISTENING (\d+)/.exec(text)![1]);
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  const stderr = new Response(proc.stderr).text();
  const writer = proc.stdin.getWriter();
  return {
    port,
    proc,
    stderr,
    async stop() {
      await writer.close().catch(() => {});
      return await proc.status;
    },
  };
}

if (import.meta.main) {
  const args = Deno.args;
  const arg = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const { ports } = createFakePorts();
  const server = createGrpcServer(ports, {
    host: arg("--host") ?? "127.0.0.1",
    port: Number(arg("--port") ?? 0),
    authToken: arg("--token"),
    filterGoaway: !args.includes("--no-filter"),
    shutdownGraceMs: 2000,
  });
  const { port } = await server.start();
  console.log(`LISTENING ${port}`);
  const stop = async () => {
    await server.shutdown();
    console.log(`STATS ${JSON.stringify(server.stats())}`);
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", stop);
  // Ends with the parent: stdin closes when the test process goes away.
  (async () => {
    for await (const _ of Deno.stdin.readable) { /* drain */ }
    await stop();
  })();
}
