/**
 * Tests that need a tool outside the project (openssl, OpenBLAS, kubectl, python3-grpcio, Docker)
 * run wherever it is present. Where it is missing they are skipped with the reason on a
 * developer's machine, but in CI (`CI=true`, as `.ci/run` runs) they run and fail with that
 * reason: a missing install step can never pass as green.
 */
export const IN_CI = (Deno.env.get("CI") ?? "").toLowerCase() === "true";

/**
 * `ignore` for a test whose tool is `missing` (a reason, or null when present), and a check that
 * its body calls first.
 */
export function requireTool(missing: string | null, file: string) {
  if (missing && !IN_CI) console.warn(`${file}: skipped: ${missing}`);
  return {
    ignore: missing !== null && !IN_CI,
    check(): void {
      if (missing) throw new Error(`CI=true and ${missing}`);
    },
  };
}

/** Debian's Python (python3-torch and the other python3-* packages the tests use are its). */
export const PYTHON = "/usr/bin/python3";

/** Whether `cmd args` runs and exits 0 (false when the command is absent). */
export async function succeeds(cmd: string, args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()).success;
  } catch {
    return false;
  }
}

/**
 * null when Debian's Python imports `modules` (comma list); otherwise the reason, naming the
 * Debian packages (`apt`) that provide them.
 */
export async function pythonMissing(modules: string, apt: string): Promise<string | null> {
  if (await succeeds(PYTHON, ["-c", `import ${modules}`])) return null;
  return `${PYTHON} cannot import ${modules} (apt-get install ${apt})`;
}
