import { assertEquals, assertThrows } from "../../test/assert.ts";
import { parsePrepareArgs } from "./prepare_data.ts";

Deno.test("parsePrepareArgs() reads --raw/--out/--check/--tasks and rejects the rest", () => {
  assertEquals(parsePrepareArgs(["--raw", "r", "--out=o"]), {
    raw: "r",
    out: "o",
    check: undefined,
    tasks: ["sentiment", "intent_and_slot", "squad"],
  });
  assertEquals(parsePrepareArgs(["--raw=r", "--check", "c", "--tasks", "squad"]).tasks, ["squad"]);
  assertThrows(() => parsePrepareArgs(["--out", "o"]), TypeError, "--raw is required");
  assertThrows(() => parsePrepareArgs(["--raw", "r"]), TypeError, "give --out, --check or both");
  assertThrows(() => parsePrepareArgs(["--raw"]), TypeError, "--raw needs a value");
  assertThrows(
    () => parsePrepareArgs(["--raw", "r", "--force"]),
    TypeError,
    'unknown argument "--force"',
  );
  assertThrows(
    () => parsePrepareArgs(["--raw", "r", "--out", "o", "--tasks", "nlu"]),
    RangeError,
    '--tasks: unknown task "nlu"',
  );
});
