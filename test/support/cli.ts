/** Runs one of the project's commands (`server/cli/<script>`) as a user does: a subprocess. */
const root = new URL("../../", import.meta.url).pathname;

export async function runCli(
  script: string,
  args: string[],
  cwd: string,
  env: Record<string, string> = {},
) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}server/cli/${script}`, ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}
