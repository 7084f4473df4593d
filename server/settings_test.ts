import { assertEquals, assertThrows } from "../test/assert.ts";
import { DEFAULT_DATA_DIR } from "./bootstrap.ts";
import { readSettings } from "./settings.ts";

const envOf = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("AUTH_TOKEN with a trailing newline is trimmed, and the log says so", () => {
  const warnings: string[] = [];
  const s = readSettings([], envOf({ AUTH_TOKEN: "s3cret\n" }), (m) => warnings.push(m));
  assertEquals(s.authToken, "s3cret");
  assertEquals(warnings, ["AUTH_TOKEN: surrounding whitespace was trimmed from the token"]);
  assertEquals(readSettings([], envOf({ AUTH_TOKEN: "ok" }), () => {}).authToken, "ok");
});

Deno.test("a token with whitespace inside, or only whitespace, is refused at start", () => {
  assertThrows(
    () => readSettings([], envOf({ AUTH_TOKEN: "two words" }), () => {}),
    RangeError,
    "must not contain whitespace",
  );
  assertThrows(() => readSettings([], envOf({ AUTH_TOKEN: " \n" }), () => {}), RangeError, "empty");
});

Deno.test("AUTH_READS protects reads too, and needs a token", () => {
  const s = readSettings([], envOf({ AUTH_TOKEN: "t", AUTH_READS: "true" }), () => {});
  assertEquals([s.authToken, s.authReads], ["t", true]);
  assertEquals(readSettings([], envOf({}), () => {}).authReads, false);
  assertThrows(
    () => readSettings([], envOf({ AUTH_READS: "true" }), () => {}),
    RangeError,
    "needs a token",
  );
  assertThrows(
    () => readSettings([], envOf({ AUTH_TOKEN: "t", AUTH_READS: "yes please" }), () => {}),
    RangeError,
    "AUTH_READS",
  );
});

Deno.test("DATA_DIR defaults to the project's data/, never the working directory", () => {
  const s = readSettings([], envOf({}), () => {});
  assertEquals(s.dataDir, DEFAULT_DATA_DIR);
  assertEquals(s.dataDir === Deno.cwd(), false);
});

Deno.test("DATABASE_URL: unset is the embedded backend; a bad one fails naming the setting", () => {
  const s = readSettings([], envOf({}), () => {});
  assertEquals([s.databaseUrl, s.jobLeaseMs], [undefined, 15_000]);
  const url = "postgres://svc:pw@db.internal:5432/pl";
  assertEquals(readSettings([], envOf({ DATABASE_URL: url }), () => {}).databaseUrl, url);
  assertEquals(readSettings(["--database-url", url], envOf({}), () => {}).databaseUrl, url);
  assertThrows(
    () => readSettings([], envOf({ DATABASE_URL: "mysql://x@h/db" }), () => {}),
    RangeError,
    "--database-url (DATABASE_URL) must start with postgres://",
  );
  const bad = "not a url:secretpw";
  const err = assertThrows(
    () => readSettings([], envOf({ DATABASE_URL: bad }), () => {}),
    RangeError,
    "DATABASE_URL",
  );
  assertEquals((err as Error).message.includes("secretpw"), false);
  assertThrows(
    () => readSettings([], envOf({ JOB_LEASE_MS: "10" }), () => {}),
    RangeError,
    "--job-lease-ms (JOB_LEASE_MS) must be an integer in [1000, 3600000]",
  );
});

Deno.test("REPLICA_ROLE: both by default; serve needs DATABASE_URL; anything else is refused naming it", () => {
  assertEquals(readSettings([], envOf({}), () => {}).role, "both");
  assertEquals(readSettings([], envOf({ REPLICA_ROLE: "train" }), () => {}).role, "train");
  const url = "postgres://svc:pw@db.internal:5432/pl";
  assertEquals(
    readSettings(["--role", "serve"], envOf({ DATABASE_URL: url }), () => {}).role,
    "serve",
  );
  assertThrows(
    () => readSettings([], envOf({ REPLICA_ROLE: "serve" }), () => {}),
    RangeError,
    "--role (REPLICA_ROLE) serve needs DATABASE_URL",
  );
  assertThrows(
    () => readSettings([], envOf({ REPLICA_ROLE: "inference" }), () => {}),
    RangeError,
    '--role (REPLICA_ROLE) must be one of serve, train, both: found "inference"',
  );
});

Deno.test("WEIGHTS: stored by default, int8 by flag or environment, anything else refused naming it", () => {
  assertEquals(readSettings([], envOf({}), () => {}).weights, "stored");
  assertEquals(readSettings([], envOf({ WEIGHTS: "int8" }), () => {}).weights, "int8");
  assertEquals(readSettings(["--weights", "int8"], envOf({}), () => {}).weights, "int8");
  assertThrows(
    () => readSettings([], envOf({ WEIGHTS: "fp8" }), () => {}),
    RangeError,
    '--weights (WEIGHTS) must be one of stored, int8: found "fp8"',
  );
});
