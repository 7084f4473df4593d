/**
 * The GPU check (test/gpu/run.sh) on every commit, where no GPU is: scripts/gpu-bundle.sh writes
 * its folder (at most 60 MiB, no weights, no datasets), and the check runs end to end from that
 * folder alone, Deno unpacked from its deno.xz, as a bare GPU machine would run it, with
 * CUDA_EMULATE=1: the cuda engine on the CPU emulation of its device, Debian's python3-torch as
 * the oracle, the tiny shape. Then: a wrong engine output fails the oracle, and a failed part
 * fails the verdict.
 */
import { assert, assertEquals } from "./assert.ts";
import { requireTool } from "./support/required_tool.ts";
import { verdict } from "./gpu/verdict.ts";

const root = new URL("../", import.meta.url).pathname;
const PYTHON = "/usr/bin/python3";
const LIMIT = 60 * 1024 * 1024;

async function succeeds(cmd: string, args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()).success;
  } catch {
    return false;
  }
}

async function missing(): Promise<string | null> {
  if (!(await succeeds("xz", ["--version"]))) return "xz is absent (apt-get install xz-utils)";
  if (!(await succeeds(PYTHON, ["-c", "import torch, numpy"]))) {
    return `${PYTHON} cannot import torch and numpy (apt-get install python3-torch python3-numpy)`;
  }
  return null;
}
const tool = requireTool(await missing(), "gpu_check_test.ts");

async function filesUnder(dir: string, base = dir): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await filesUnder(p, base));
    else out.push({ path: p.slice(base.length + 1), size: (await Deno.stat(p)).size });
  }
  return out;
}

Deno.test({
  name: "the GPU check's bundle runs end to end on the emulated device and passes",
  ignore: tool.ignore,
  async fn() {
    tool.check();
    const tmp = await Deno.makeTempDir({ prefix: "gpu-check-test-" });
    try {
      const bundle = `${tmp}/bundle`;
      const built = await new Deno.Command(`${root}scripts/gpu-bundle.sh`, { args: [bundle] })
        .output();
      assert(built.success, new TextDecoder().decode(built.stderr));
      const files = await filesUnder(bundle);
      const size = files.reduce((s, f) => s + f.size, 0);
      console.log(`bundle: ${(size / 2 ** 20).toFixed(1)} MiB in ${files.length} files`);
      assert(size <= LIMIT, `bundle is ${size} bytes, over 60 MiB`);
      const heavy = files.filter((f) =>
        /\.(safetensors|jsonl|bin|gguf|pt)$/.test(f.path) || /^(models|data)\//.test(f.path)
      );
      assertEquals(heavy, [], "weights or datasets in the bundle");
      for (const f of ["run.sh", "deno.xz", "MANIFEST", "test/gpu/oracle.py"]) {
        assert(files.some((x) => x.path === f), `${f} is missing from the bundle`);
      }

      // From the bundle alone: no DENO, nothing of the repository on the way.
      const env = Deno.env.toObject();
      delete env.DENO;
      const out = `${tmp}/out`, work = `${tmp}/work`;
      const t0 = performance.now();
      const run = await new Deno.Command("bash", {
        args: [`${bundle}/run.sh`],
        cwd: tmp,
        clearEnv: true,
        env: { ...env, CUDA_EMULATE: "1", OUT: out, GPU_CHECK_WORK: work, PYTHON, NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stdout = new TextDecoder().decode(run.stdout);
      const seconds = (performance.now() - t0) / 1000;
      const lines = stdout.trimEnd().split("\n");
      const last = lines.at(-1)!;
      console.log(`dry run: ${seconds.toFixed(0)} s; ${last}`);
      assert(run.success, `the dry run failed (exit ${run.code}):\n${lines.slice(-40).join("\n")}`);
      assert(last.startsWith("GPU CHECK PASS: "), last);
      const report = JSON.parse(await Deno.readTextFile(`${out}/gpu_check.json`));
      assertEquals(report.verdict, last);
      const parts = report.parts as { name: string; status: string }[];
      assertEquals(parts.map((p) => p.name), [
        "env",
        "build",
        "kernels",
        "generate",
        "oracle",
        "serving",
        "training",
        "bench",
      ]);
      for (const p of parts) {
        assert(p.status === "pass" || (p.name === "build" && p.status === "skipped"), p.name);
      }
      const log = await Deno.readTextFile(`${out}/gpu_check.log`);
      assertEquals(log.trimEnd().split("\n").at(-1), last);
      // The oracle checked every cuda precision and the fast engine, all with stated tolerances.
      const oracle = JSON.parse(await Deno.readTextFile(`${work}/oracle/tiny/oracle.json`));
      assertEquals(
        oracle.results.map((r: { label: string }) => r.label),
        ["cuda fp32", "cuda tf32", "cuda bf16", "cuda fp16", "fast fp32"],
      );
      assert(String(oracle.oracle).includes("float64"), oracle.oracle);

      // A wrong engine output fails the oracle: one gradient value moved by 1% of the largest.
      const path = `${work}/oracle/tiny/cuda-fp32.safetensors`;
      const bytes = await Deno.readFile(path);
      const header = JSON.parse(
        new TextDecoder().decode(
          bytes.subarray(8, 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true))),
        ),
      );
      const start = 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true)) +
        header.grad.data_offsets[0];
      const grad = new Float32Array(
        bytes.buffer,
        start,
        header.grad.shape[0] * header.grad.shape[1],
      );
      grad[7] += 0.01 * grad.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      await Deno.writeFile(`${tmp}/wrong.safetensors`, bytes);
      const wrong = await new Deno.Command(PYTHON, {
        args: [
          `${bundle}/test/gpu/oracle.py`,
          ...["--model", `${work}/models/tiny`, "--case", `${work}/oracle/tiny/case.safetensors`],
          ...["--json", `${tmp}/wrong.json`, "--device", "cpu", `${tmp}/wrong.safetensors`],
        ],
        stdout: "piped",
      }).output();
      assertEquals(wrong.code, 1, new TextDecoder().decode(wrong.stdout));
      const verdictOfWrong = JSON.parse(await Deno.readTextFile(`${tmp}/wrong.json`));
      assertEquals(verdictOfWrong.results[0].grad.pass, false);
      assertEquals(verdictOfWrong.results[0].logits.pass, true);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test("the verdict fails when a part fails, and names it", async () => {
  const work = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${work}/parts.tsv`,
      "env\tpass\t1\tNVIDIA H100\nbuild\tpass\t9\t\noracle\tFAIL\t30\t\nbench\tskipped\t0\t\n",
    );
    await Deno.mkdir(`${work}/results`);
    await Deno.writeTextFile(
      `${work}/results/oracle.json`,
      JSON.stringify({ pass: false, summary: "gpt2 cuda bf16: FAIL" }),
    );
    const { line, pass } = await verdict(work, `${work}/out`);
    assertEquals(pass, false);
    assertEquals(
      line,
      "GPU CHECK FAIL: env pass 1s, build pass 9s, oracle FAIL 30s, bench skipped 0s; 40s on NVIDIA H100",
    );
    const report = JSON.parse(await Deno.readTextFile(`${work}/out/gpu_check.json`));
    assertEquals(report.parts[2].result.summary, "gpt2 cuda bf16: FAIL");
    // Nothing ran at all is a failure too.
    await Deno.writeTextFile(`${work}/parts.tsv`, "");
    assertEquals((await verdict(work, `${work}/out`)).pass, false);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
