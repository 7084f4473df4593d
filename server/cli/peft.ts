/**
 * `deno task peft import --name NAME --adapter DIR` and
 * `deno task peft export --task NAME [--version N] --out DIR`: PEFT prompt-tuning adapters in and
 * out of the registry without a server (the service's RegisterTask takes adapter bytes too).
 */
import { openRuntime } from "../bootstrap.ts";
import { flag, parseArgs, runCommand } from "./args.ts";
import { exportPeftAdapter, importPeftAdapter } from "../registry/peft.ts";

const USAGE =
  `usage: deno task peft import --name NAME --adapter DIR [--template "<|VIRTUAL_PROMPT_0|> ..."]
       deno task peft export --task NAME [--version N] --out DIR
       common: [--registry DIR] [--model DIR]`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const args = parseArgs(rest, [
    "name",
    "adapter",
    "template",
    "task",
    "version",
    "out",
    "registry",
    "model",
  ], ["help"]);
  if (!command || args.flags.has("help") || !["import", "export"].includes(command)) {
    console.log(USAGE);
    return command ? 0 : 1;
  }
  const rt = await openRuntime({
    modelDir: flag(args, "model", "MODEL_DIR"),
    registryDir: flag(args, "registry", "REGISTRY_DIR"),
    backend: "wasm",
  });
  if (command === "import") {
    const name = flag(args, "name"), dir = flag(args, "adapter");
    if (!name || !dir) throw new RangeError(`import needs --name and --adapter\n${USAGE}`);
    const draft = await importPeftAdapter(dir, {
      name,
      fingerprint: rt.fingerprint,
      promptTemplate: flag(args, "template"),
    });
    const v = await rt.store.put(name, draft);
    console.log(
      JSON.stringify({
        imported: dir,
        task: v.name,
        version: v.version,
        virtual_tokens: v.totalVirtualTokens,
      }),
    );
  } else {
    const task = flag(args, "task"), out = flag(args, "out");
    if (!task || !out) throw new RangeError(`export needs --task and --out\n${USAGE}`);
    const version = flag(args, "version");
    const v = await rt.store.get(task, version ? Number(version) : undefined);
    await exportPeftAdapter(v, out, {
      numLayers: rt.model.config.nLayer,
      numAttentionHeads: rt.model.config.nHead,
    });
    console.log(JSON.stringify({ exported: out, task: v.name, version: v.version }));
  }
  return 0;
}

if (import.meta.main) await runCommand("peft", main);
