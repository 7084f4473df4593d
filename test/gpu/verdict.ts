/**
 * The GPU check's last word: every part's outcome (run.sh's parts.tsv, and each Deno step's
 * results/<step>.json) gathered into OUT/gpu_check.json, and one line saying each part's pass or
 * fail and the headline ratios against PyTorch.
 */

interface Part {
  name: string;
  status: string;
  seconds: number;
  note: string;
  result?: Record<string, unknown>;
}

/** ours / PyTorch at fp32 and bf16 for each shape, as "gpt2 fp32 train 1.2x fwd 0.9x ...". */
function headline(bench: Record<string, unknown> | undefined): string[] {
  const shapes = bench?.shapes as Record<string, { ratios: Record<string, unknown> }> | undefined;
  if (!shapes) return [];
  const out: string[] = [];
  for (const [shape, r] of Object.entries(shapes)) {
    for (const p of ["fp32", "bf16"]) {
      const x = r.ratios[p] as Record<string, number> | null;
      if (!x) continue;
      out.push(
        `${shape} ${p} vs torch: train ${x.train}x fwd ${x.forward}x gen1 ${x.gen1}x genN ${x.genN}x`,
      );
    }
  }
  return out;
}

export async function verdict(work: string, out: string): Promise<{ line: string; pass: boolean }> {
  const parts: Part[] = [];
  let tsv = "";
  try {
    tsv = await Deno.readTextFile(`${work}/parts.tsv`);
  } catch {
    // no part ran: the verdict says so below
  }
  for (const line of tsv.split("\n").filter(Boolean)) {
    const [name, status, seconds, note] = line.split("\t");
    const part: Part = { name, status, seconds: Number(seconds), note: note ?? "" };
    try {
      part.result = JSON.parse(await Deno.readTextFile(`${work}/results/${name}.json`));
    } catch {
      // a part that is not a Deno step (build, kernels), or one that died before writing
    }
    parts.push(part);
  }
  const pass = parts.length > 0 &&
    parts.every((p) => p.status === "pass" || p.status === "skipped");
  const env = parts.find((p) => p.name === "env")?.note ?? "";
  const total = parts.reduce((s, p) => s + p.seconds, 0);
  const bench = parts.find((p) => p.name === "bench")?.result;
  const line = [
    `GPU CHECK ${pass ? "PASS" : "FAIL"}: ` +
    (parts.length
      ? parts.map((p) => `${p.name} ${p.status} ${p.seconds}s`).join(", ")
      : "no part ran"),
    ...headline(bench),
    `${total}s${env ? ` on ${env}` : ""}`,
  ].join("; ");
  await Deno.mkdir(out, { recursive: true });
  await Deno.writeTextFile(
    `${out}/gpu_check.json`,
    JSON.stringify({ pass, verdict: line, time: new Date().toISOString(), parts }, null, 2) + "\n",
  );
  return { line, pass };
}
