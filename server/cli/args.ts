/** Minimal `--flag value` / `--flag=value` / `--bool` parsing with errors that name the flag. */
export interface ParsedArgs {
  flags: Map<string, string | true>;
  positional: string[];
}

export function parseArgs(
  argv: string[],
  known: readonly string[],
  booleans: readonly string[] = [],
): ParsedArgs {
  const flags = new Map<string, string | true>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) {
      positional.push(a);
      continue;
    }
    const eq = a.indexOf("=");
    const name = a.slice(2, eq < 0 ? undefined : eq);
    if (!known.includes(name) && !booleans.includes(name)) {
      throw new RangeError(
        `unknown flag --${name}: expected one of ${
          [...known, ...booleans].map((k) => `--${k}`).join(", ")
        }`,
      );
    }
    if (booleans.includes(name)) {
      flags.set(name, true);
    } else if (eq >= 0) {
      flags.set(name, a.slice(eq + 1));
    } else {
      if (i + 1 >= argv.length) throw new RangeError(`flag --${name} needs a value`);
      flags.set(name, argv[++i]);
    }
  }
  return { flags, positional };
}

export function flag(args: ParsedArgs, name: string, env?: string): string | undefined {
  const v = args.flags.get(name);
  if (typeof v === "string") return v;
  return env ? Deno.env.get(env) : undefined;
}

/** `12.3s`, `4m05s`, `1h02m`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** One progress line: bar, step, loss, learning rate, tokens/s, ETA. */
export function progressLine(
  p: {
    step: number;
    total: number;
    loss: number;
    lr: number;
    tokensPerSecond: number;
    etaSeconds: number;
  },
  width = 24,
): string {
  const frac = p.total > 0 ? Math.min(1, p.step / p.total) : 0;
  const full = Math.round(frac * width);
  const bar = "#".repeat(full) + "-".repeat(width - full);
  return `[${bar}] step ${p.step}/${p.total} loss ${p.loss.toFixed(4)} lr ${
    p.lr.toExponential(2)
  } ` +
    `${Math.round(p.tokensPerSecond)} tok/s ETA ${formatDuration(p.etaSeconds)}`;
}

/**
 * Runs a command's `main` and exits with its code; a thrown error becomes one line,
 * `<name>: <message>`, and exit code 1 (bad input is the user's to fix, not a stack trace).
 */
export async function runCommand(
  name: string,
  main: (argv: string[]) => Promise<number>,
): Promise<never> {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`${name}: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
