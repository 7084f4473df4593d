/**
 * `deno task train --config run.yaml [key=value ...]`: trains without a server, drawing a
 * progress bar (step, loss, learning rate, tokens/s, ETA) on stderr and printing the task
 * versions written and their metrics as JSON on stdout.
 */
import { resolve } from "node:path";
import { openRuntime } from "../bootstrap.ts";
import { invalidArgument, notFound } from "../errors.ts";
import { flag, parseArgs, progressLine, runCommand } from "./args.ts";
import type { TrainingEvent } from "../training/events.ts";
import { trainFromConfig } from "../training/run.ts";
import { DEFAULT_VAL_GENERATE_LIMIT, readRunConfig } from "../training/run_plan.ts";

const USAGE =
  `usage: deno task train --config FILE [--model DIR] [--registry DIR] [--backend auto|fast|onednn|wasm|cpu|tensorflow]
       [--runs DIR] [--data-dir DIR] [--val-generate N] [--quiet] [key.path=value ...]
Relative dataset paths resolve against the current directory, as NeMo's scripts resolve them (or
against --data-dir DIR); absolute paths are taken as they are.`;

async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv, [
    "config",
    "model",
    "registry",
    "backend",
    "runs",
    "data-dir",
    "val-generate",
  ], [
    "quiet",
    "help",
  ]);
  if (args.flags.has("help")) {
    console.log(USAGE);
    return 0;
  }
  const file = flag(args, "config");
  if (!file) throw new RangeError(`--config is required\n${USAGE}`);
  const loaded = readRunConfig(
    { kind: "yaml", text: await Deno.readTextFile(file), file, overrides: args.positional },
    {},
  );
  const { config, notes } = loaded;
  for (const n of notes) console.error(`note: ${file}: ${n}`);
  const rt = await openRuntime({
    modelDir: oneOf(
      "the frozen model",
      ["--model", flag(args, "model", "MODEL_DIR")],
      ["model.language_model_path", config.model.language_model_path],
    ),
    registryDir: await restoreRegistry(
      oneOf(
        "the registry",
        ["--registry", flag(args, "registry", "REGISTRY_DIR")],
        ["model.restore_path", config.model.restore_path],
      ),
      config.model.restore_path,
    ),
    backend: flag(args, "backend", "BACKEND"),
  });
  const quiet = args.flags.has("quiet") || !Deno.stderr.isTerminal();
  let total = 0;
  const started = performance.now();
  const write = (s: string) => Deno.stderr.writeSync(new TextEncoder().encode(s));
  const onEvent = (e: TrainingEvent) => {
    switch (e.type) {
      case "started": {
        total = e.totalSteps;
        const examples = Object.values(e.trainExamples).reduce((a, b) => a + b, 0);
        const dropped = Object.values(e.droppedExamples).reduce((a, b) => a + b, 0);
        write(
          `training ${examples} examples (${e.skippedRecords} bad records skipped, ${dropped} dropped) for ${e.totalSteps} steps${
            e.resumedFromStep ? `, resuming at step ${e.resumedFromStep}` : ""
          }${
            e.encoderFrom ? `, encoder from ${e.encoderFrom.task} v${e.encoderFrom.version}` : ""
          }\n`,
        );
        break;
      }
      case "step": {
        const line = progressLine({
          step: e.step,
          total,
          loss: e.loss,
          lr: e.learningRate,
          tokensPerSecond: e.tokensPerSecond,
          etaSeconds: e.etaSeconds,
        });
        if (quiet) {
          if (e.step % 10 === 0 || e.step === total) write(line + "\n");
        } else write(`\r${line}\x1b[K`);
        break;
      }
      case "validation":
        write(
          `${quiet ? "" : "\n"}validation at step ${e.step}: loss ${e.loss.toFixed(4)} ${
            JSON.stringify(e.metrics)
          }\n`,
        );
        break;
      case "completed":
        if (e.earlyStopped) write(`early stop at step ${e.steps}\n`);
        break;
      default:
        break;
    }
  };
  const abort = new AbortController();
  Deno.addSignalListener("SIGINT", () => abort.abort());
  // The same rules as the service's, but for the server's own: the command reads the paths it is
  // given, relative ones from where it runs (DATA_DIR is the service's confinement, not read
  // here), and has no limits beyond the model's and serving's.
  const rules = {
    dataDir: flag(args, "data-dir") ?? Deno.cwd(),
    service: false,
    valGenerateLimit: Number(flag(args, "val-generate") ?? DEFAULT_VAL_GENERATE_LIMIT),
  };
  const result = await trainFromConfig(
    loaded,
    rules,
    {
      engine: rt.engine,
      tokenizer: rt.tokenizer,
      store: rt.store,
      fingerprint: rt.fingerprint,
      runsDir: flag(args, "runs", "RUNS_DIR") ?? config.exp_manager.exp_dir ?? "runs",
      log: (msg) => write(`note: ${msg}\n`),
      writeNemoPath: true,
    },
    onEvent,
    abort.signal,
  );
  const wall = (performance.now() - started) / 1000;
  console.log(
    JSON.stringify({
      wall_seconds: Math.round(wall * 10) / 10,
      backend: rt.engine.name,
      versions: result.versions.map((v) => ({
        name: v.name,
        version: v.version,
        metrics: v.metrics,
      })),
      ...(result.tensorboardDir ? { tensorboard_dir: result.tensorboardDir } : {}),
    }),
  );
  return 0;
}

/**
 * One setting given two ways must agree: a flag and the configuration key naming the same thing
 * (the frozen model, the registry) are both honoured only when they say the same path.
 */
function oneOf(
  what: string,
  a: [string, string | undefined | null],
  b: [string, string | undefined | null],
): string | undefined {
  const [an, av] = a, [bn, bv] = b;
  if (av && bv && resolve(av) !== resolve(bv)) {
    throw invalidArgument(`${an} (${av}) and ${bn} (${bv}) name different paths for ${what}`);
  }
  return av ?? bv ?? undefined;
}

/** NeMo's restore_path names what a run adds to, so it must exist: a registry directory. */
async function restoreRegistry(
  dir: string | undefined,
  restorePath: string | null,
): Promise<string | undefined> {
  if (!dir || !restorePath) return dir;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw notFound(
        `model.restore_path: ${dir} does not exist (it names the registry the run adds its tasks to)`,
      );
    }
    throw e;
  }
  if (!info.isDirectory) {
    throw invalidArgument(
      `model.restore_path: ${dir} is not a directory: it names a registry directory (a NeMo .nemo file cannot be read here; import its tasks with deno task peft import)`,
    );
  }
  return dir;
}

if (import.meta.main) await runCommand("train", main);
