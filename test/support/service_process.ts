/**
 * The real service as a process: `server/main.ts` with the given environment, on a free loopback
 * port. Resolves once it logs that it is serving (log lines before that, such as what a restart
 * cleared, are passed over), with its address.
 */
const root = new URL("../../", import.meta.url).pathname;

export interface ServiceProcess {
  child: Deno.ChildProcess;
  address: string;
  reader: ReadableStreamDefaultReader<string>;
  /** The "serving" log line (engine, weights, role, ...). */
  serving: Record<string, unknown>;
}

export async function startService(env: Record<string, string>): Promise<ServiceProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}server/main.ts`],
    env: {
      PORT: "0",
      HOST: "127.0.0.1",
      OPENBLAS_CORETYPE: Deno.env.get("OPENBLAS_CORETYPE") ?? "Haswell",
      ...env,
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const serving = () =>
    buf.split("\n").slice(0, -1).map((l) => JSON.parse(l)).find((l) => l.msg === "serving");
  while (!serving()) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server exited before serving: ${buf}`);
    buf += value;
  }
  const line = serving();
  return { child, address: line.address as string, reader, serving: line };
}
