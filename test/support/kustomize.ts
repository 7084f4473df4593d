/** `kubectl kustomize` for the manifest tests: whether kubectl is there, and a checked render. */
import { requireTool } from "./required_tool.ts";

const present = await (async () => {
  try {
    const out = await new Deno.Command("kubectl", {
      args: ["version", "--client"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
})();

/** The `ignore`/`check` pair of a test that renders (see required_tool.ts). */
export function kubectlTool(file: string) {
  return requireTool(
    present ? null : "kubectl is missing (apt-get install kubernetes-client)",
    file,
  );
}

/** The YAML `kubectl kustomize dir` renders; throws with kubectl's words when it fails. */
export async function kustomize(dir: string): Promise<string> {
  const out = await new Deno.Command("kubectl", {
    args: ["kustomize", dir],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`kubectl kustomize ${dir} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}
