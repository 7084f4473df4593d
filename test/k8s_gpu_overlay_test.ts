/**
 * The GPU deployment (k8s/overlays/gpu, a kustomize overlay of k8s/base) against Dockerfile.gpu: it runs the
 * GPU image, selects the cuda backend the image defaults to, asks for one GPU, and keeps the
 * base's user. Rendering needs kubectl; without it the test is ignored, saying so.
 */
import { kubectlTool, kustomize } from "./support/kustomize.ts";
import { parseAllDocuments } from "yaml";
import { assert, assertEquals } from "./assert.ts";

const root = new URL("../", import.meta.url);

type Obj = Record<string, unknown>;

function get(obj: unknown, ...path: (string | number)[]): unknown {
  let at = obj;
  for (const p of path) at = (at as Record<string | number, unknown> | undefined)?.[p];
  return at;
}

/** `ENV A=1 B=2` pairs of the last stage of Dockerfile.gpu. */
async function gpuImageEnv(): Promise<Map<string, string>> {
  const text = (await Deno.readTextFile(new URL("Dockerfile.gpu", root))).replace(/\\\n/g, " ");
  const stages = text.split(/^FROM\s/m);
  const env = new Map<string, string>();
  for (const line of stages[stages.length - 1].split("\n")) {
    const m = /^ENV\s+(.*)$/.exec(line.trim());
    if (!m) continue;
    for (const pair of m[1].trim().split(/\s+/)) {
      const eq = pair.indexOf("=");
      if (eq > 0) env.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
  }
  return env;
}

const kubectlCheck = kubectlTool("k8s_gpu_overlay_test.ts");

Deno.test({
  name: "k8s/overlays/gpu: the overlay runs the GPU image with BACKEND=cuda on one GPU",
  ignore: kubectlCheck.ignore,
  async fn() {
    kubectlCheck.check();
    const objs = parseAllDocuments(await kustomize(new URL("k8s/overlays/gpu/", root).pathname))
      .map((d) => d.toJS() as Obj);
    const one = (kind: string) => {
      const found = objs.filter((o) => o.kind === kind);
      assertEquals(found.length, 1, `one ${kind}`);
      return found[0];
    };
    const env = await gpuImageEnv();
    const configMap = one("ConfigMap"), deployment = one("Deployment");
    assertEquals(env.get("BACKEND"), "cuda");
    assertEquals(get(configMap, "data", "BACKEND"), env.get("BACKEND"));
    assertEquals(get(configMap, "data", "CUDA_PRECISION"), env.get("CUDA_PRECISION"));
    const container = get(deployment, "spec", "template", "spec", "containers", 0);
    assertEquals(get(container, "image"), "promptlearning-gpu:0.1.0");
    assertEquals(get(container, "resources", "limits", "nvidia.com/gpu"), "1");
    const text = await Deno.readTextFile(new URL("Dockerfile.gpu", root));
    assert(/^USER 10001:10001$/m.test(text), "Dockerfile.gpu runs as the base image's uid 10001");
    assertEquals(
      get(deployment, "spec", "template", "spec", "securityContext", "runAsUser"),
      10001,
    );
  },
});
