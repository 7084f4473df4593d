/**
 * The text layer of a configuration: OmegaConf interpolations (`${a.b}`, spliced or whole), the
 * `???` marker of a value left to be given, and Hydra-style command-line overrides. Bounded, so a
 * small file cannot fan out into a huge one.
 */
import * as YAML from "yaml";
import { invalidArgument } from "../errors.ts";

/** Stands for OmegaConf's `???` (a value the file requires someone to give). */
export const MISSING = Symbol("???");

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

/** Splits an interpolation key like `model.task_templates[0].taskname` into segments. */
export function keySegments(key: string): string[] {
  return key.replace(/\[(\d+)\]/g, ".$1").split(".").filter((s) => s !== "");
}

/** Bounds on interpolation, so a small file cannot fan out into a huge one (or a long stall). */
const INTERPOLATION_LIMITS = { depth: 32, steps: 100_000, textChars: 1 << 20 };

/**
 * Resolves OmegaConf interpolations (absolute `${a.b}` only), turns `???` into MISSING and
 * Python's `None` into null. A string that is one interpolation takes the referenced value as
 * is; otherwise references are spliced in as text.
 */
export function resolveInterpolations(root: unknown, file: string): unknown {
  const at = (p: string) => (file ? `${file}: ${p}` : p);
  // Each referenced key is resolved once: references fanning out 30 wide over 5 levels cost 150
  // lookups, not 30^5.
  const memo = new Map<string, unknown>();
  let steps = 0;
  const lookup = (key: string, from: string): unknown => {
    let v: unknown = root;
    for (const seg of keySegments(key)) {
      if (Array.isArray(v) && /^\d+$/.test(seg)) v = v[Number(seg)];
      else if (isObj(v)) v = v[seg];
      else v = undefined;
      if (v === undefined) {
        throw invalidArgument(`${at(from)} refers to \${${key}}, which the file does not define`);
      }
    }
    return v;
  };
  const resolve = (v: unknown, path: string, stack: string[]): unknown => {
    if (++steps > INTERPOLATION_LIMITS.steps) {
      throw invalidArgument(
        `${
          at(path)
        }: the configuration expands to more than ${INTERPOLATION_LIMITS.steps} values through its \${...} references`,
      );
    }
    if (Array.isArray(v)) return v.map((x, i) => resolve(x, `${path}[${i}]`, stack));
    if (isObj(v)) {
      const out: Obj = {};
      for (const [k, x] of Object.entries(v)) out[k] = resolve(x, path ? `${path}.${k}` : k, stack);
      return out;
    }
    if (typeof v !== "string") return v;
    if (v === "???") return MISSING;
    // YAML written for NeMo (Python) says None where it means null.
    if (v === "None") return null;
    if (!v.includes("${")) return v;
    const refs = [...v.matchAll(/\$\{([^}]*)\}/g)];
    const target = (key: string): unknown => {
      if (key.includes(":") || key.startsWith(".")) {
        throw invalidArgument(
          `${at(path)}: interpolation \${${key}} is not supported (only absolute \${a.b} keys)`,
        );
      }
      if (stack.includes(key)) {
        throw invalidArgument(`${at(path)}: interpolation \${${key}} refers to itself`);
      }
      if (stack.length >= INTERPOLATION_LIMITS.depth) {
        throw invalidArgument(
          `${at(path)}: \${...} references nest deeper than ${INTERPOLATION_LIMITS.depth}`,
        );
      }
      if (!memo.has(key)) memo.set(key, resolve(lookup(key, path), key, [...stack, key]));
      return memo.get(key);
    };
    if (refs.length === 1 && refs[0][0] === v) return target(refs[0][1]);
    const text = v.replace(/\$\{([^}]*)\}/g, (_, key: string) => {
      const x = target(key);
      if (x === MISSING || isObj(x) || Array.isArray(x)) {
        throw invalidArgument(`${at(path)}: \${${key}} is not a value that can go into text`);
      }
      return String(x);
    });
    if (text.length > INTERPOLATION_LIMITS.textChars) {
      throw invalidArgument(
        `${
          at(path)
        }: the text its \${...} references make is longer than ${INTERPOLATION_LIMITS.textChars} characters`,
      );
    }
    return text;
  };
  return resolve(root, "", []);
}

export function applyOverride(doc: YAML.Document, override: string): void {
  const del = override.startsWith("~");
  const body = override.replace(/^(\+\+|\+|~)/, "");
  const eq = body.indexOf("=");
  const key = del ? (eq >= 0 ? body.slice(0, eq) : body) : body.slice(0, eq);
  if ((!del && eq < 1) || key === "") {
    throw invalidArgument(`override ${JSON.stringify(override)} must look like key.path=value`);
  }
  const path = keySegments(key).map((s) => (/^\d+$/.test(s) ? Number(s) : s));
  if (del) {
    doc.deleteIn(path);
    return;
  }
  const valueDoc = YAML.parseDocument(body.slice(eq + 1));
  if (valueDoc.errors.length > 0) {
    throw invalidArgument(
      `override ${JSON.stringify(override)}: the value is not valid YAML (${
        valueDoc.errors[0].message.split("\n")[0]
      })`,
    );
  }
  doc.setIn(path, valueDoc.contents ?? null);
}
