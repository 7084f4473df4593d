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
