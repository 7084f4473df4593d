/**
 * Runs `cmd` with `input` written to its stdin and returns its exit code and output as text: the
 * tests that hand data to a reference script (PyTorch, Hugging Face tokenizers, prometheus_client,
 * the perf attribution) and read its answer.
 */
export async function runWithInput(
  cmd: string,
  args: string[],
  input: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(input));
  await writer.close();
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
