/**
 * The Python client package (client/python/) as a user gets it: its committed stubs are what
 * protoc and grpc_python_plugin make of proto/ now; `pip install` puts it into a fresh venv offline
 * (Debian's python3-grpcio and python3-protobuf satisfying its dependencies); its wrapper's unit
 * tests pass there; and its example trains a task on the real service, printing progress, then
 * infers. Skipped, saying why, when the Debian packages are absent (in CI, CI=true, it fails
 * instead); CI installs them (python3-grpcio python3-protobuf python3-venv python3-setuptools
 * python3-wheel protobuf-compiler protobuf-compiler-grpc libprotobuf-dev).
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { requireTool } from "./support/required_tool.ts";
import { spawnTestServer } from "./support/test_service.ts";

const PYTHON = "/usr/bin/python3";
const PACKAGE = new URL("../client/python", import.meta.url).pathname;
const dec = new TextDecoder();

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd, {
    args,
    env: { PIP_DISABLE_PIP_VERSION_CHECK: "1", PIP_NO_INPUT: "1", PYTHONPATH: "", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs and fails with its output unless it exits 0. */
async function ok(cmd: string, args: string[], env: Record<string, string> = {}) {
  const r = await run(cmd, args, env);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}):\n${r.stdout}${r.stderr}`);
  }
  return r;
}

async function runs(cmd: string, args: string[]): Promise<string | null> {
  try {
    const r = await run(cmd, args);
    return r.code === 0 ? r.stdout : null;
  } catch {
    return null;
  }
}

async function missingForInstall(): Promise<string | null> {
  if ((await runs(PYTHON, ["-c", "import grpc, google.protobuf"])) === null) {
    return `${PYTHON} cannot import grpc and google.protobuf (apt-get install python3-grpcio python3-protobuf)`;
  }
  if ((await runs(PYTHON, ["-c", "import ensurepip, setuptools, wheel"])) === null) {
    return `${PYTHON} cannot make a venv and build a wheel offline (apt-get install python3-venv python3-setuptools python3-wheel)`;
  }
  return null;
}

/** protoc as generate.py's PROTOC_VERSION names it (its output differs from version to version). */
async function missingForStubs(): Promise<string | null> {
  const pinned = /PROTOC_VERSION = "([^"]+)"/.exec(
    await Deno.readTextFile(join(PACKAGE, "generate.py")),
  )![1];
  const version = (await runs("protoc", ["--version"]))?.trim();
  if (version === undefined) return "protoc is absent (apt-get install protobuf-compiler)";
  if (version !== pinned) return `protoc is ${version}; the committed stubs are ${pinned}'s`;
  if ((await runs("sh", ["-c", "command -v grpc_python_plugin"])) === null) {
    return "grpc_python_plugin is absent (apt-get install protobuf-compiler-grpc)";
  }
  if ((await runs(PYTHON, ["--version"])) === null) return `${PYTHON} is absent`;
  return null;
}

/** client/python without what builds and runs leave in it (as a fresh clone has it). */
async function copyPackage(from: string, to: string): Promise<void> {
  const left = new Set(["build", "dist", "__pycache__", ".venv", "venv"]);
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (left.has(e.name) || e.name.endsWith(".egg-info")) continue;
    if (e.isDirectory) await copyPackage(join(from, e.name), join(to, e.name));
    else if (e.isFile) await Deno.copyFile(join(from, e.name), join(to, e.name));
  }
}

const stubsTool = requireTool(await missingForStubs(), "python_client_test.ts (stubs)");
const installTool = requireTool(await missingForInstall(), "python_client_test.ts");

Deno.test({
  name: "client/python's committed stubs are what protoc and grpc_python_plugin make of proto/",
  ignore: stubsTool.ignore,
  async fn() {
    stubsTool.check();
    const r = await ok(PYTHON, [join(PACKAGE, "generate.py"), "--check"]);
    assertStringIncludes(r.stdout, "up to date: prompt_learning_pb2.py");
  },
});

Deno.test({
  name:
    "client/python pip-installs offline; its wrapper's tests pass; its example trains and infers on the real service",
  ignore: installTool.ignore,
  async fn(t) {
    installTool.check();
    const tmp = await Deno.makeTempDir({ prefix: "plpyclient-" });
    const source = join(tmp, "python");
    const venv = join(tmp, "venv");
    const py = join(venv, "bin", "python");
    try {
      await copyPackage(PACKAGE, source);
      await t.step(
        "pip install --no-index into a venv over Debian's grpcio and protobuf",
        async () => {
          await ok(PYTHON, ["-m", "venv", "--system-site-packages", venv]);
          const r = await ok(py, [
            "-m",
            "pip",
            "install",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            source,
          ]);
          assertStringIncludes(r.stdout, "Successfully installed promptlearning-client-0.1.0");
          // From outside the source: the generated modules' absolute imports resolve in the package.
          const where = await ok(py, [
            "-c",
            "import promptlearning, promptlearning.v1.prompt_learning_pb2_grpc as g; print(g.__file__)",
          ]);
          assertStringIncludes(where.stdout, join(venv, "lib"));
        },
      );

      await t.step(
        "the wrapper's unit tests (auth metadata, errors naming fields, resuming)",
        async () => {
          const r = await ok(
            py,
            ["-m", "unittest", "discover", "-v", "-s", join(source, "tests")],
            {
              PROMPTLEARNING_SOURCE: source,
            },
          );
          assertMatch(r.stderr, /Ran 1\d tests/);
          assertStringIncludes(r.stderr, "\nOK");
        },
      );

      await t.step(
        "the example trains on the real service, printing progress, then infers",
        async () => {
          const s = await spawnTestServer(["--token", "py-token"]);
          try {
            const example = join(source, "examples", "train_and_infer.py");
            const address = `127.0.0.1:${s.port}`;
            const refused = await run(py, [example, "--address", address, "--token", "wrong"]);
            assertEquals(refused.code, 1, refused.stdout + refused.stderr);
            assertStringIncludes(refused.stderr, "error: Train: UNAUTHENTICATED");

            const r = await ok(py, [example, "--address", address, "--token", "py-token"]);
            const out = r.stdout;
            assertMatch(out, /^job [0-9a-f-]+ queued \(position 0\)$/m);
            assertMatch(out, /^job [0-9a-f-]+ started: sentiment_py, 4 steps$/m);
            const steps = [
              ...out.matchAll(/^\[[#.]{24}\] step (\d)\/4 epoch \d loss \d+\.\d{4} /gm),
            ]
              .map((m) => Number(m[1]));
            assertEquals(steps, [1, 2, 3, 4], out);
            assertMatch(out, /^validation @4: sentiment_py: loss=\d+\.\d{4}$/m);
            assertMatch(out, /^job [0-9a-f-]+ completed: wrote sentiment_py v1 in 4 steps$/m);
            assertMatch(out, /^task sentiment_py v1: 4 virtual tokens of 256 values$/m);
            const answers = [
              ...out.matchAll(
                / -> (positive|negative) \(positive (0\.\d\d), negative (0\.\d\d)\)$/gm,
              ),
            ];
            assertEquals(answers.length, 2, out);
            for (const [, , p, n] of answers) {
              assert(Math.abs(Number(p) + Number(n) - 1) <= 0.011, `probabilities: ${p} + ${n}`);
            }
            assertMatch(out, /^'i loved it' generates '.*' \(\d tokens\)$/m);
          } finally {
            await s.stop();
          }
        },
      );
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
