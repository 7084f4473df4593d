/**
 * The shim's products on packed weights (`OnednnLib.packedKernels().product`: bf16, f16, and int8
 * with a scale per stored row) against reading the same bytes (`OnednnLib.sum` over a
 * Float32Array of equal byte size), for gpt2-medium's decoding shapes.
 * Each shape cycles through enough copies (at least 96 MiB) that the weights come from memory,
 * not the last-level cache. Times are medians.
 * Run: deno run -A bench/half_bench.ts [--threads 2] [--reps 15]. Prints a table.
 */
import { parseArgs } from "node:util";
import type { HalfDtype, PackedMatrix } from "../server/model/half.ts";
import { loadOnednn } from "../server/model/onednn/lib.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: { threads: { type: "string", default: "2" }, reps: { type: "string", default: "15" } },
});
const lib = loadOnednn();
lib.setThreads(Number(args.threads));
const hk = lib.packedKernels();
const reps = Number(args.reps);
const MIN_BYTES = 96 * 2 ** 20;

function median(fn: (i: number) => void): number {
  fn(0); // warm up
  const times: number[] = [];
  for (let i = 1; i <= reps; i++) {
    const t0 = performance.now();
    fn(i);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

const shapes: [string, number, number, boolean][] = [
  ["attn qkv", 1024, 3072, false],
  ["mlp fc", 1024, 4096, false],
  ["mlp proj", 4096, 1024, false],
  ["lm head", 1024, 50257, true], // logits = h @ wte^T, wte stored [V, C]
];
const rows: string[][] = [];
for (const [name, K, N, transposed] of shapes) {
  for (const dtype of ["bf16", "f16", "int8"] as const) {
    const width = dtype === "int8" ? 1 : 2;
    const bytes = K * N * width, copies = Math.max(1, Math.ceil(MIN_BYTES / bytes));
    const ws: PackedMatrix[] = Array.from({ length: copies }, (_, c) => {
      if (dtype === "int8") {
        const q = new Int8Array(K * N);
        for (let i = 0; i < q.length; i++) q[i] = ((i * 7 + c) % 255) - 127;
        return { dtype, bits: q, scales: new Float32Array(transposed ? N : K).fill(0.01) };
      }
      const b = new Uint16Array(K * N);
      for (let i = 0; i < b.length; i++) b[i] = 0x3c00 ^ ((i * 7 + c) & 0x3ff); // finite f16 and bf16
      return { dtype: dtype as HalfDtype, bits: b };
    });
    const floats = Array.from({ length: copies }, () => new Float32Array(bytes / 4).fill(1));
    const read = median((i) => lib.sum(floats[i % copies]));
    const row = [`${name} ${K}x${N}${transposed ? " T" : ""}`, dtype, read.toFixed(3)];
    for (const m of [1, 4, 32]) {
      const x = new Float32Array(m * K).fill(0.5), y = new Float32Array(m * N);
      const t = median((i) => hk.product(m, K, N, x, ws[i % copies], transposed, false, y));
      row.push(m === 1 ? `${t.toFixed(3)} (${(t / read).toFixed(2)}x)` : t.toFixed(3));
    }
    rows.push(row);
  }
}
const head = ["shape (K x N)", "dtype", "read ms", "m=1 ms (/read)", "m=4 ms", "m=32 ms"];
const width = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
for (const r of [head, ...rows]) console.log(r.map((v, c) => v.padEnd(width[c])).join("  "));
