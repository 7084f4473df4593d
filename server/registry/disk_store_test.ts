import { createHash } from "node:crypto";
import { join } from "node:path";
import { DiskTaskStore } from "./disk_store.ts";
import { encodeMeta, type MetaFile } from "./_meta_file.ts";
import { FingerprintMismatchError, TaskCorruptError } from "./errors.ts";
import { assert, assertEquals, assertRejects } from "../../test/assert.ts";
import { draft, FP, OTHER_FP, withEncoder } from "./_test_util.ts";

const WORKER = new URL("./testdata/put_worker.ts", import.meta.url).pathname;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "registry_disk_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function flipByte(
  path: string,
  at: (bytes: Uint8Array) => number,
  mask = 0x40,
): Promise<void> {
  const bytes = await Deno.readFile(path);
  const i = at(bytes);
  assert(i >= 0 && i < bytes.length, `no byte ${i} in ${path}`);
  bytes[i] ^= mask;
  await Deno.writeFile(path, bytes);
}

function textIndex(bytes: Uint8Array, text: string): number {
  return new TextDecoder().decode(bytes).indexOf(text);
}

async function entries(path: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(path)) out.push(e.name);
  return out.sort();
}

Deno.test("DiskTaskStore stores each version as <name>/v<N>/ with meta, table and encoder files", async () => {
  await withDir(async (dir) => {
    const s = await DiskTaskStore.open(dir);
    await s.put("pt", withEncoder(draft("pt")));
    await s.put("pt", draft("pt", 1));
    assertEquals(await entries(dir), [".tmp", ".trash", "pt"]);
    assertEquals(await entries(join(dir, "pt")), ["v1", "v2"]);
    assertEquals(await entries(join(dir, "pt", "v1")), [
      "encoder.safetensors",
      "meta.json",
      "table.safetensors",
    ]);
    assertEquals(await entries(join(dir, "pt", "v2")), ["meta.json", "table.safetensors"]);
    assertEquals(await entries(join(dir, ".tmp")), []);
  });
});

for (
  const [file, where, at, mask] of [
    ["table.safetensors", "a table value", (b: Uint8Array) => b.length - 3, 0x40],
    ["table.safetensors", "the header", () => 20, 0x40],
    ["meta.json", "its own checksum", (b: Uint8Array) => b.length - 20, 0x40],
    ["meta.json", "the template", (b: Uint8Array) => textIndex(b, "sentiment"), 0x40],
    // 8 -> 9 keeps the JSON valid: only the checksum can tell.
    ["meta.json", "the fingerprint", (b: Uint8Array) => textIndex(b, '"hiddenSize": 8') + 14, 1],
    ["meta.json", "the JSON syntax", (b: Uint8Array) => textIndex(b, '"hiddenSize": 8') + 14, 0x40],
    ["encoder.safetensors", "an encoder value", (b: Uint8Array) => b.length - 1, 0x40],
  ] as const
) {
  Deno.test(`DiskTaskStore.get() refuses a version whose ${file} has a flipped byte in ${where}`, async () => {
    await withDir(async (dir) => {
      const s = await DiskTaskStore.open(dir);
      await s.put("t", withEncoder(draft("t", 1)));
      await s.put("t", withEncoder(draft("t", 2)));
      await flipByte(join(dir, "t", "v2", file), at, mask);
      const fresh = await DiskTaskStore.open(dir);
      const e = await assertRejects(() => fresh.get("t"), TaskCorruptError, "refusing to use");
      assert(e.message.includes("v2"), e.message);
      // The damage stays with that version: the one before is still served.
      assertEquals((await fresh.get("t", 1)).table, draft("t", 1).table);
    });
  });
}

Deno.test("DiskTaskStore.list() reports a task with damaged metadata in place and lists the rest", async () => {
  await withDir(async (dir) => {
    const s = await DiskTaskStore.open(dir);
    for (const n of ["a", "b", "c"]) await s.put(n, draft(n));
    await flipByte(join(dir, "b", "v1", "meta.json"), (b) => textIndex(b, "sentiment"));
    const { tasks } = await s.list();
    assertEquals(tasks.map((t) => [t.name, t.latest === null]), [
      ["a", false],
      ["b", true],
      ["c", false],
    ]);
    assert(tasks[1].problem?.includes("metadata fails its checksum") ?? false);
  });
});

Deno.test("DiskTaskStore.describe() of a task deleted and re-created under the same number is the new one", async () => {
  await withDir(async (dir) => {
    const s = await DiskTaskStore.open(dir, { fingerprint: FP });
    await s.put("t", draft("t", 0, { tokens: 4 }));
    assertEquals((await s.describe("t")).totalVirtualTokens, 4);
    // Another writer (a process sharing the directory) replaces the task: v1 again.
    const other = await DiskTaskStore.open(dir, { fingerprint: FP });
    await other.delete("t");
    await other.put("t", draft("t", 1, { tokens: 6 }));
    const again = await s.describe("t");
    assertEquals([again.version, again.totalVirtualTokens], [1, 6]);
    assertEquals((await s.get("t")).table.length, 6 * FP.hiddenSize);
  });
});

Deno.test("DiskTaskStore.get() refuses a version tuned on another model than the one it serves", async () => {
  await withDir(async (dir) => {
    const unchecked = await DiskTaskStore.open(dir);
    await unchecked.put("other", draft("other", 0, { fingerprint: OTHER_FP }));
    await unchecked.put("mine", draft("mine"));
    const s = await DiskTaskStore.open(dir, { fingerprint: FP });
    await assertRejects(
      () => s.get("other"),
      FingerprintMismatchError,
      'task "other" v1 was tuned on another base model: weights hash bbbbbbbbbbbb',
    );
    await assertRejects(() => s.describe("other"), FingerprintMismatchError);
    assertEquals((await s.get("mine")).table, draft("mine").table);
    const big = await DiskTaskStore.open(dir, { fingerprint: { ...FP, hiddenSize: 16 } });
    await assertRejects(
      () => big.get("mine"),
      FingerprintMismatchError,
      "hidden size 8 (model: 16)",
    );
  });
});

Deno.test("DiskTaskStore.put() keeps the old version when the write fails", async () => {
  await withDir(async (dir) => {
    await (await DiskTaskStore.open(dir)).put("t", draft("t", 1));
    const failing = await DiskTaskStore.open(dir, {
      onWrite: (e) => {
        if (e.stage === "written") throw new Error("disk full (simulated)");
      },
    });
    await assertRejects(() => failing.put("t", draft("t", 2)), Error, "disk full (simulated)");
    assertEquals(await failing.versions("t"), [1]);
    assertEquals((await failing.get("t")).table, draft("t", 1).table);
    assertEquals(await entries(join(dir, ".tmp")), []);
  });
});

Deno.test("DiskTaskStore.open() removes scratch left by dead writers and keeps live ones", async () => {
  await withDir(async (dir) => {
    await DiskTaskStore.open(dir);
    const host = encodeURIComponent(Deno.hostname());
    const uuid = "00000000-0000-4000-8000-000000000000";
    // pid 2^22 + 1 is above Linux's pid_max, so no live process has it.
    const dead = `${2 ** 22 + 1}.${uuid}.${host}`;
    const live = `${Deno.pid}.${uuid}.${host}`;
    const elsewhere = `${2 ** 22 + 1}.${uuid}.another-host`;
    for (const name of [dead, live, elsewhere]) {
      await Deno.mkdir(join(dir, ".tmp", name, "sub"), { recursive: true });
      await Deno.mkdir(join(dir, ".trash", name), { recursive: true });
    }
    await DiskTaskStore.open(dir);
    assertEquals(await entries(join(dir, ".tmp")), [live, elsewhere].sort());
    assertEquals(await entries(join(dir, ".trash")), [live, elsewhere].sort());
  });
});

Deno.test("DiskTaskStore.open() and list() over 1,000 tasks read no tables", async () => {
  await withDir(async (dir) => {
    const s = await DiskTaskStore.open(dir);
    const first = await s.put("task0000", draft("task0000"));
    const meta = JSON.parse(await Deno.readTextFile(join(dir, "task0000", "v1", "meta.json")));
    delete meta.metaSha256;
    // Laid out directly (without put()'s fsyncs) to keep the test fast; then every table is
    // made unreadable, so a listing that touched one would fail.
    for (let i = 0; i < 1000; i++) {
      const name = `task${String(i).padStart(4, "0")}`;
      await Deno.mkdir(join(dir, name, "v1"), { recursive: true });
      const m: MetaFile = { ...meta, name, uid: crypto.randomUUID() };
      m.template = { ...m.template, taskname: name };
      await Deno.writeFile(join(dir, name, "v1", "meta.json"), encodeMeta(m));
      await Deno.writeFile(join(dir, name, "v1", "table.safetensors"), new Uint8Array([1, 2, 3]));
    }
    const t0 = performance.now();
    const fresh = await DiskTaskStore.open(dir);
    const seen: string[] = [];
    let token = "";
    do {
      const page = await fresh.list({ pageSize: 1000, pageToken: token });
      for (const t of page.tasks) {
        assert(t.latest !== null, t.problem);
        assertEquals(t.latest.checksum, first.checksum);
        seen.push(t.name);
      }
      token = page.nextPageToken;
    } while (token);
    const ms = performance.now() - t0;
    assertEquals(seen.length, 1000);
    console.log(`open + list of 1,000 tasks: ${ms.toFixed(0)} ms`);
    await assertRejects(() => fresh.get("task0500"), TaskCorruptError, "too short");
  });
});

Deno.test("DiskTaskStore.get() serves a cached table until the version is deleted and recreated", async () => {
  await withDir(async (dir) => {
    const a = await DiskTaskStore.open(dir);
    const b = await DiskTaskStore.open(dir);
    await a.put("t", draft("t", 1));
    assertEquals((await a.get("t")).table, draft("t", 1).table); // cached in a
    await b.delete("t");
    await b.put("t", draft("t", 2)); // another v1, written by another store
    assertEquals((await a.get("t", 1)).table, draft("t", 2).table);
  });
});

function spawnWorker(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", WORKER, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Reads the child's stdout until a line equals `line`. */
async function waitForLine(child: Deno.ChildProcess, line: string): Promise<void> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.split("\n").includes(line)) {
    const { value, done } = await reader.read();
    if (done) {
      const err = await new Response(child.stderr).text();
      throw new Error(`worker exited before printing ${line}: ${text}\n${err}`);
    }
    text += value;
  }
  reader.releaseLock();
}

for (const stage of ["chunk", "written"]) {
  Deno.test(`DiskTaskStore keeps the previous version readable when a writer is SIGKILLed (at "${stage}")`, async () => {
    await withDir(async (dir) => {
      const s = await DiskTaskStore.open(dir, { fingerprint: FP });
      const d = draft("big", 7);
      await s.put("big", d);
      // 300,000 tokens x 8 = 9.6 MB: ten 1 MiB chunks, so "chunk" stops inside the table file.
      const child = spawnWorker([dir, "big", "1", "1", "300000", stage]);
      await waitForLine(child, "PAUSED");
      child.kill("SIGKILL");
      const status = await child.status;
      await child.stdin.close().catch(() => {});
      await child.stderr.cancel();
      assertEquals(status.signal, "SIGKILL");
      assertEquals((await entries(join(dir, ".tmp"))).length, 1); // the dead writer's scratch

      const after = await DiskTaskStore.open(dir, { fingerprint: FP });
      assertEquals(await entries(join(dir, ".tmp")), []);
      assertEquals(await after.versions("big"), [1]);
      const v = await after.get("big");
      assertEquals([v.version, v.table], [1, d.table]);
      assertEquals((await after.list()).tasks.map((t) => t.latestVersion), [1]);
      assertEquals((await after.put("big", draft("big", 8))).version, 2);
    });
  });
}

Deno.test("DiskTaskStore: two writer processes putting 20 versions each make 40 distinct, readable versions", async () => {
  await withDir(async (dir) => {
    await DiskTaskStore.open(dir);
    const children = [1, 2].map((w) => spawnWorker([dir, "shared", String(w), "20", "4", "start"]));
    // Both open the store first, then start together, so their puts race for the same numbers.
    const stdouts = children.map((c) => c.stdout.pipeThrough(new TextDecoderStream()).getReader());
    const firstLines = await Promise.all(stdouts.map((r) => r.read()));
    assertEquals(firstLines.map((l) => l.value), ["READY\n", "READY\n"]);
    await Promise.all(children.map((c) => c.stdin.getWriter().write(new Uint8Array([1]))));
    const texts = await Promise.all(stdouts.map(async (r) => {
      let text = "";
      for (let c = await r.read(); !c.done; c = await r.read()) text += c.value;
      return text;
    }));
    const statuses = await Promise.all(children.map((c) => c.status));
    for (const [i, st] of statuses.entries()) {
      assert(st.success, await new Response(children[i].stderr).text());
    }
    await Promise.all(children.map((c) => c.stderr.cancel().catch(() => {})));
    const made = texts.flatMap((t) =>
      t.trim().split("\n").map((l) => JSON.parse(l) as { version: number; seed: number })
    );
    const s = await DiskTaskStore.open(dir, { fingerprint: FP });
    assertEquals(await s.versions("shared"), Array.from({ length: 40 }, (_, i) => i + 1));
    assertEquals(made.map((m) => m.version).sort((a, b) => a - b), await s.versions("shared"));
    for (const { version, seed } of made) {
      const v = await s.get("shared", version);
      assertEquals(v.table, new Float32Array(32).fill(seed));
      assertEquals(v.metrics, { worker: Math.floor(seed / 1000), i: seed % 1000 });
    }
  });
});

Deno.test("DiskTaskStore errors name stored files relative to the registry, never the server's path", async () => {
  await withDir(async (dir) => {
    const s = await DiskTaskStore.open(dir, { fingerprint: FP });
    await s.put("t", draft("t"));
    const table = join(dir, "t", "v1", "table.safetensors");
    const bytes = await Deno.readFile(table);
    bytes[bytes.length - 1] ^= 0xff;
    await Deno.writeFile(table, bytes);
    const fresh = await DiskTaskStore.open(dir, { fingerprint: FP });
    const e = await assertRejects(() => fresh.get("t"), TaskCorruptError, "registry/t/v1");
    assertEquals(e.message.includes(dir), false, e.message);
    await Deno.remove(join(dir, "t", "v1", "meta.json"));
    const missing = await assertRejects(
      () => fresh.describe("t"),
      TaskCorruptError,
      "registry/t/v1/meta.json: missing",
    );
    assertEquals(missing.message.includes(dir), false, missing.message);
  });
});

const LEGACY = new URL("../../test/fixtures/registry_legacy_mlp/", import.meta.url).pathname;

Deno.test("DiskTaskStore reads a version stored before NeMo's encoders: its \"mlp\" is PEFT's MLP", async () => {
  await withDir(async (dir) => {
    // Written by the code before the NeMo/PEFT split (see the fixture's README).
    await Deno.mkdir(join(dir, "legacy", "v1"), { recursive: true });
    for (const f of ["meta.json", "table.safetensors", "encoder.safetensors"]) {
      await Deno.copyFile(join(LEGACY, "legacy", "v1", f), join(dir, "legacy", "v1", f));
    }
    const s = await DiskTaskStore.open(dir, { fingerprint: FP });
    assertEquals((await s.describe("legacy")).encoderKind, "peft_mlp");
    const v = await s.get("legacy");
    assertEquals(v.encoderState?.kind, "peft_mlp");
    assertEquals(v.encoderState?.config.num_layers, 2);
    assertEquals(Object.keys(v.encoderState!.tensors).sort(), [
      "embedding.weight",
      "mlp_head.0.bias",
      "mlp_head.0.weight",
      "mlp_head.2.bias",
      "mlp_head.2.weight",
      "mlp_head.4.bias",
      "mlp_head.4.weight",
    ]);
    assertEquals((await s.list()).tasks[0].latest?.encoderKind, "peft_mlp");
    // A new version of the same encoder is written under the new spelling and reads back the same.
    const again = await s.put("legacy", { ...v, encoderState: v.encoderState });
    const meta = JSON.parse(await Deno.readTextFile(join(dir, "legacy", "v2", "meta.json")));
    assertEquals(meta.encoder.kind, "peft_mlp");
    assertEquals((await s.get("legacy", again.version)).encoderState, v.encoderState);
  });
});

Deno.test('DiskTaskStore stores NeMo\'s mlp as "nemo_mlp", never as the old PEFT "mlp"', async () => {
  await withDir(async (dir) => {
    const s = await DiskTaskStore.open(dir);
    const spelt: Record<string, string> = {};
    for (const kind of ["tpmlp", "mlp", "lstm", "peft_mlp"] as const) {
      const d = withEncoder(draft(`k_${kind}`));
      await s.put(`k_${kind}`, { ...d, encoderState: { ...d.encoderState!, kind } });
      const meta = JSON.parse(await Deno.readTextFile(join(dir, `k_${kind}`, "v1", "meta.json")));
      spelt[kind] = meta.encoder.kind;
      const fresh = await DiskTaskStore.open(dir);
      assertEquals((await fresh.get(`k_${kind}`)).encoderState?.kind, kind);
      assertEquals((await fresh.describe(`k_${kind}`)).encoderKind, kind);
    }
    assertEquals(spelt, { tpmlp: "tpmlp", mlp: "nemo_mlp", lstm: "lstm", peft_mlp: "peft_mlp" });
  });
});

Deno.test("DiskTaskStore refuses a stored encoder kind it does not know", async () => {
  await withDir(async (dir) => {
    const s = await DiskTaskStore.open(dir);
    await s.put("t", withEncoder(draft("t")));
    const path = join(dir, "t", "v1", "meta.json");
    const { metaSha256: _, ...meta } = JSON.parse(await Deno.readTextFile(path));
    meta.encoder.kind = "gru";
    // Written with a valid metaSha256, so only the kind check can refuse it.
    const body = JSON.stringify(meta, null, 2);
    const sum = createHash("sha256").update(body).digest("hex");
    await Deno.writeTextFile(path, JSON.stringify({ ...meta, metaSha256: sum }, null, 2) + "\n");
    const fresh = await DiskTaskStore.open(dir);
    await assertRejects(() => fresh.get("t"), TaskCorruptError, "encoder is invalid");
  });
});
