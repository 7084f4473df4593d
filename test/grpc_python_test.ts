/**
 * A client in another language: Debian's python3-grpcio, with stubs generated from proto/ by protoc
 * and grpc_python_plugin, calls every RPC against the real services (test/python/).
 * Skipped, saying why, when those packages are absent (in CI, CI=true, it fails instead); CI installs them
 * (apt-get install -y python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc).
 */
import { assertStringIncludes } from "./assert.ts";
import { requireTool } from "./support/required_tool.ts";
import { spawnTestServer } from "./support/test_service.ts";

const PYTHON = "/usr/bin/python3";

async function missing(): Promise<string | null> {
  const run = async (cmd: string, args: string[]) => {
    try {
      return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output())
        .success;
    } catch {
      return false;
    }
  };
  if (!(await run(PYTHON, ["-c", "import grpc, google.protobuf"]))) {
    return `${PYTHON} cannot import grpc and google.protobuf (apt-get install python3-grpcio python3-protobuf)`;
  }
  if (!(await run("protoc", ["--version"]))) {
    return "protoc is absent (apt-get install protobuf-compiler)";
  }
  if (!(await run("sh", ["-c", "command -v grpc_python_plugin"]))) {
    return "grpc_python_plugin is absent (apt-get install protobuf-compiler-grpc)";
  }
  return null;
}

const tool = requireTool(await missing(), "grpc_python_test.ts");

Deno.test({
  name: "Python grpcio calls every RPC with stubs generated from proto/",
  ignore: tool.ignore,
  async fn() {
    tool.check();
    const s = await spawnTestServer(["--token", "py-token"]);
    try {
      const out = await new Deno.Command(PYTHON, {
        args: [
          new URL("./python/call_every_rpc.py", import.meta.url).pathname,
          new URL("../proto", import.meta.url).pathname,
          `127.0.0.1:${s.port}`,
          "py-token",
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      if (!out.success) {
        throw new Error(
          `python failed (${out.code}):\n${dec.decode(out.stdout)}${dec.decode(out.stderr)}`,
        );
      }
      assertStringIncludes(dec.decode(out.stdout), "12 RPCs OK");
    } finally {
      await s.stop();
    }
  },
});
