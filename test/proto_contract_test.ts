/**
 * The API contract, checked with buf (the npm devDependency @bufbuild/buf; its binary comes from
 * the platform package npm installs beside it): proto/ meets buf.yaml's lint rules, and
 * `scripts/check-proto.sh` (what CI runs) finds no breaking change against the last release tag's
 * proto, yet fails, naming each change, on a copy broken on purpose.
 *
 * Where the clone has no release tags (a shallow clone, a copy without history), the check is
 * against the newest committed snapshot of a release's proto (api/releases/), which a further test
 * compares with its tag wherever the tag is present.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const BUF = join(ROOT, "node_modules/.bin/buf");
const SCRIPT = join(ROOT, "scripts/check-proto.sh");
const PROTO = join(ROOT, "proto/promptlearning/v1/prompt_learning.proto");

interface Run {
  code: number;
  out: string;
}

async function run(cmd: string, args: string[], opts: Deno.CommandOptions = {}): Promise<Run> {
  const o = await new Deno.Command(cmd, { args, cwd: ROOT, ...opts }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout) + dec.decode(o.stderr) };
}

/** The last release tag reachable from HEAD, as the script finds it, or null. */
async function lastReleaseTag(): Promise<string | null> {
  const r = await run("git", ["describe", "--tags", "--abbrev=0", "--match", "v*"]);
  return r.code === 0 ? r.out.trim() : null;
}

const tag = await lastReleaseTag();
/** The newest release snapshot (what the script uses without tags). */
const SNAPSHOTS = join(ROOT, "api/releases");
const snapshot = [...Deno.readDirSync(SNAPSHOTS)].map((e) => e.name).filter((n) =>
  n.startsWith("v")
)
  .sort((a, b) => a.localeCompare(b, undefined, { numeric: true })).at(-1)!;

Deno.test("buf lint: proto/ meets buf.yaml's rules (STANDARD and COMMENTS, with its listed exceptions)", async () => {
  const r = await run(BUF, ["lint", "proto"]);
  assertEquals(r.out, "", "buf lint's findings");
  assertEquals(r.code, 0, `buf lint exited with ${r.code}`);
});

Deno.test("scripts/check-proto.sh passes: proto/ breaks nothing of the last release's API", async () => {
  const r = await run(SCRIPT, []);
  assertEquals(r.code, 0, r.out);
  assertStringIncludes(r.out, "buf lint: proto/ passes");
  assertStringIncludes(r.out, `buf breaking: proto/ keeps the API of `);
  assertStringIncludes(r.out, tag ? `#tag=${tag},subdir=proto` : `api/releases/${snapshot}`);
});

Deno.test({
  name: "without tags the script checks against the newest release snapshot, which equals its tag",
  async fn() {
    // A copy without git history: no tag to find.
    const dir = await Deno.makeTempDir({ prefix: "proto_contract_notag_" });
    try {
      for (const sub of ["scripts", "api/releases"]) {
        await Deno.mkdir(join(dir, sub), { recursive: true });
      }
      await Deno.copyFile(SCRIPT, join(dir, "scripts/check-proto.sh"));
      await Deno.copyFile(join(ROOT, "buf.yaml"), join(dir, "buf.yaml"));
      await Deno.symlink(join(ROOT, "node_modules"), join(dir, "node_modules"));
      await run("cp", ["-r", join(ROOT, "proto"), dir]);
      await run("cp", ["-r", join(SNAPSHOTS, snapshot), join(dir, "api/releases/")]);
      const r = await run(join(dir, "scripts/check-proto.sh"), [], {
        cwd: dir,
        env: { GIT_DIR: join(dir, "no-git") },
      });
      assertEquals(r.code, 0, r.out);
      assertStringIncludes(r.out, `checking against the snapshot api/releases/${snapshot}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    // Where the tag is here, the snapshot is its proto files, byte for byte.
    if (tag === null) return;
    const files = (await run("git", ["ls-tree", "-r", "--name-only", snapshot, "proto"])).out
      .split("\n").filter((f) => f.endsWith(".proto"));
    assert(files.length > 0, `the tag ${snapshot} has proto files`);
    for (const f of files) {
      const atTag = (await run("git", ["show", `${snapshot}:${f}`])).out;
      const copy = await Deno.readTextFile(join(SNAPSHOTS, snapshot, f.slice("proto/".length)));
      assertEquals(copy, atTag, `api/releases/${snapshot}/${f.slice("proto/".length)}`);
    }
  },
});

/** Each change made to the copy, and what buf says of it. */
const BREAKS: { from: string; to: string; finding: string }[] = [
  {
    // A field renumbered: old clients' field 8 is no longer read.
    from: "  string squad_gold = 8;",
    to: "  string squad_gold = 9;",
    finding: 'Previously present field "8" with name "squad_gold" on message "EvaluateRequest" ' +
      "was deleted.",
  },
  {
    // A field retyped: the wire type of field 2 changes.
    from: "    int32 top_k = 2;",
    to: "    string top_k = 2;",
    finding: 'Field "2" with name "top_k" on message "Random" changed type from "int32" to ' +
      '"string".',
  },
  {
    // An RPC removed: its callers get UNIMPLEMENTED.
    from: "  rpc DeleteTask(DeleteTaskRequest) returns (DeleteTaskResponse);",
    to: "",
    finding: 'Previously present RPC "DeleteTask" on service "PromptLearning" was deleted.',
  },
];

Deno.test({
  name: "scripts/check-proto.sh fails, naming each change, on a proto/ with a field renumbered, " +
    "a field retyped and an RPC removed",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "proto_contract_" });
    try {
      // The script, buf.yaml and proto/ copied; the copy compares with this repository's tag.
      await Deno.mkdir(join(dir, "scripts"));
      await Deno.copyFile(SCRIPT, join(dir, "scripts/check-proto.sh"));
      await Deno.copyFile(join(ROOT, "buf.yaml"), join(dir, "buf.yaml"));
      await Deno.symlink(join(ROOT, "node_modules"), join(dir, "node_modules"));
      const target = join(dir, "proto/promptlearning/v1/prompt_learning.proto");
      await Deno.mkdir(join(dir, "proto/promptlearning/v1"), { recursive: true });
      await Deno.mkdir(join(dir, "proto/grpc/health/v1"), { recursive: true });
      await Deno.copyFile(
        join(ROOT, "proto/grpc/health/v1/health.proto"),
        join(dir, "proto/grpc/health/v1/health.proto"),
      );
      let text = await Deno.readTextFile(PROTO);
      for (const b of BREAKS) {
        assertEquals(
          text.split(b.from).length,
          2,
          `the proto has one line ${JSON.stringify(b.from)}`,
        );
        text = text.replace(b.from, b.to);
      }
      await Deno.writeTextFile(target, text);

      // Against the last release: its tag where the clone has it, else its snapshot.
      const gitDir = (await run("git", ["rev-parse", "--path-format=absolute", "--git-common-dir"]))
        .out.trim();
      const against = tag ? `${gitDir}#tag=${tag},subdir=proto` : join(SNAPSHOTS, snapshot);
      const r = await run(join(dir, "scripts/check-proto.sh"), [], {
        cwd: dir,
        env: { PROTO_AGAINST: against },
      });
      assert(r.code !== 0, `the script passed a broken proto:\n${r.out}`);
      assertStringIncludes(r.out, "buf lint: proto/ passes"); // the copy is still well-formed
      for (const b of BREAKS) assertStringIncludes(r.out, b.finding);
      assertStringIncludes(r.out, "error: proto/ breaks the API of ");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
