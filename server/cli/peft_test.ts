import { assertEquals } from "../../test/assert.ts";
import { parseSafetensors, readFloat32 } from "../model/safetensors.ts";

const root = new URL("../../", import.meta.url).pathname;
const fixture = `${root}test/fixtures/peft_prompt_tuning_sentiment`;

async function peft(args: string[], cwd: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}server/cli/peft.ts`, ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("deno task peft imports an adapter into the registry and exports the same embeddings", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const imp = await peft([
      "import",
      "--name",
      "sentiment",
      "--adapter",
      fixture,
      "--registry",
      "reg",
    ], dir);
    assertEquals(imp.code, 0, imp.stderr);
    assertEquals(JSON.parse(imp.stdout).version, 1);
    const exp = await peft(
      ["export", "--task", "sentiment", "--out", "out", "--registry", "reg"],
      dir,
    );
    assertEquals(exp.code, 0, exp.stderr);
    const read = async (d: string) =>
      readFloat32(
        parseSafetensors(await Deno.readFile(`${d}/adapter_model.safetensors`), d),
        "prompt_embeddings",
      );
    assertEquals(await read(`${dir}/out`), await read(fixture));
    const config = JSON.parse(await Deno.readTextFile(`${dir}/out/adapter_config.json`));
    assertEquals([config.peft_type, config.num_virtual_tokens, config.token_dim], [
      "PROMPT_TUNING",
      10,
      256,
    ]);
    const missing = await peft(
      ["export", "--task", "nope", "--out", "x", "--registry", "reg"],
      dir,
    );
    assertEquals(missing.code, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
