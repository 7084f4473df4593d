/**
 * denoland/deno#36788: a Deno server on @grpc/grpc-js dies (`free(): invalid pointer`, or nghttp2's
 * `find_stream_on_goaway_func` assertion) when a grpc-js client closes a channel that has carried
 * more than ~128 calls, because the client's GOAWAY makes nghttp2 walk a corrupted stream map.
 *
 * - The scanner that removes client GOAWAY frames is checked on every chunking.
 * - The crash is reproduced on a subprocess server with the filter turned off.
 * - The same server with the filter (the default) survives channels closing after many calls,
 *   and a soak of many channels answers every call. GRPC_SOAK=full runs the issue's soak: 200
 *   channels x 200 calls (the default run is 20 x 200).
 */
import { Buffer } from "node:buffer";
import { PromptLearningClient } from "../client/client.ts";
import { FrameScanner } from "../server/rpc/goaway_filter.ts";
import { assert, assertEquals } from "./assert.ts";
import { spawnTestServer as serve } from "./support/test_service.ts";

const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

function frame(type: number, streamId: number, payload: Uint8Array): Uint8Array {
  const b = Buffer.alloc(9 + payload.length);
  b.writeUIntBE(payload.length, 0, 3);
  b[3] = type;
  b[4] = 0;
  b.writeUInt32BE(streamId, 5);
  b.set(payload, 9);
  return b;
}

function concat(parts: Uint8Array[]): Uint8Array {
  return Buffer.concat(parts);
}

Deno.test("FrameScanner removes GOAWAY frames and keeps every other byte, however the input is split", () => {
  const settings = frame(0x4, 0, new Uint8Array(12).fill(1));
  const headers = frame(0x1, 1, new Uint8Array(20).fill(2));
  const data = frame(0x0, 1, new Uint8Array(300).fill(3));
  const goaway = frame(0x7, 0, new Uint8Array(8).fill(7));
  const emptyGoaway = frame(0x7, 0, new Uint8Array(0));
  const ping = frame(0x6, 0, new Uint8Array(8).fill(6));
  const input = concat([PREFACE, settings, headers, goaway, data, emptyGoaway, ping]);
  const expected = concat([PREFACE, settings, headers, data, ping]);
  for (const size of [1, 2, 5, 9, 10, 17, 64, input.length]) {
    const scanner = new FrameScanner();
    const out: Uint8Array[] = [];
    for (let at = 0; at < input.length; at += size) {
      out.push(...scanner.scan(input.subarray(at, at + size)));
    }
    assertEquals(Buffer.from(concat(out)).equals(Buffer.from(expected)), true, `chunk ${size}`);
    assertEquals(scanner.goawaysDropped, 2);
  }
});

/** Whether the process has exited, without waiting for it. */
async function exited(proc: Deno.ChildProcess): Promise<Deno.CommandStatus | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const r = await Promise.race([
    proc.status,
    new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), 200)),
  ]);
  clearTimeout(timer);
  return r;
}

interface Load {
  ok: number;
  errors: number;
  ms: number;
}

/**
 * Opens `channels` channels one after another; on each runs `calls` calls, the first half one at
 * a time and the rest 50 at a time, then closes it (which sends GOAWAY).
 */
async function load(port: number, channels: number, calls: number): Promise<Load> {
  let ok = 0, errors = 0;
  const t0 = performance.now();
  const one = async (c: PromptLearningClient) => {
    try {
      await c.health("", { deadline: 10_000 });
      ok++;
    } catch {
      errors++;
    }
  };
  for (let ch = 0; ch < channels; ch++) {
    const c = new PromptLearningClient({ address: `127.0.0.1:${port}` });
    const half = Math.floor(calls / 2);
    for (let i = 0; i < half; i++) await one(c);
    for (let i = half; i < calls; i += 50) {
      await Promise.all(Array.from({ length: Math.min(50, calls - i) }, () => one(c)));
    }
    c.close();
  }
  return { ok, errors, ms: performance.now() - t0 };
}

Deno.test("Without the filter, the Deno server dies when clients close channels after many calls (deno#36788)", async () => {
  let crash: string | null = null;
  for (let attempt = 0; attempt < 3 && crash === null; attempt++) {
    const s = await serve(["--no-filter"]);
    await load(s.port, 4, 300);
    // The crash follows the client's GOAWAY; give the server a moment to process it.
    await new Promise((r) => setTimeout(r, 300));
    const st = await exited(s.proc);
    if (st) crash = `exit ${st.code} signal ${st.signal}: ${(await s.stderr).trim().slice(-200)}`;
    else await s.stop();
  }
  if (Deno.version.deno === "2.9.6") {
    assert(crash !== null, "expected the unfiltered server to crash on Deno 2.9.6");
    console.log(`reproduced: ${crash}`);
  } else {
    console.log(`Deno ${Deno.version.deno}: ${crash ?? "the unfiltered server survived"}`);
  }
});

Deno.test("With the filter, the server survives channels closing after many calls and answers them all", async () => {
  const s = await serve();
  try {
    const r = await load(s.port, 4, 300);
    await new Promise((r) => setTimeout(r, 300));
    const st = await exited(s.proc);
    if (st) throw new Error(`server died (${st.code}, ${st.signal}): ${await s.stderr}`);
    assertEquals([r.ok, r.errors], [1200, 0]);
  } catch (e) {
    await s.stop();
    throw e;
  }
  const st = await s.stop();
  if (st.code !== 0) throw new Error(`server exit ${st.code}: ${await s.stderr}`);
});

Deno.test("Soak: one server, channels of 200 calls opened and closed in turn, every call answered", async () => {
  const full = Deno.env.get("GRPC_SOAK") === "full";
  const channels = full ? 200 : 20, calls = 200;
  const s = await serve();
  try {
    const r = await load(s.port, channels, calls);
    const st = await exited(s.proc);
    if (st) throw new Error(`server died (${st.code}, ${st.signal}): ${await s.stderr}`);
    assertEquals([r.ok, r.errors], [channels * calls, 0]);
    console.log(
      `soak ${channels} channels x ${calls} calls: ${r.ok} ok, ${r.errors} errors, ` +
        `${(r.ms / 1000).toFixed(1)} s, ${(r.ok / (r.ms / 1000)).toFixed(0)} calls/s`,
    );
  } catch (e) {
    await s.stop();
    throw e;
  }
  const st = await s.stop();
  if (st.code !== 0) throw new Error(`server exit ${st.code}: ${await s.stderr}`);
});
