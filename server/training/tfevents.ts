/**
 * TensorBoard's event file format, written without TensorFlow: a file of records, each TFRecord
 * framing (tensorflow/core/lib/io/record_writer.cc: uint64 length, little-endian; masked CRC32C of
 * those 8 bytes; the data; masked CRC32C of the data) around one serialised `Event` protobuf.
 * Field numbers are TensorFlow's, quoted by file at each message below.
 */
/** The first event of every file says which format follows (event.proto: "brain.Event:2"). */
export const FILE_VERSION = "brain.Event:2";

/** What one summary value holds: a point of a scalar curve, or a text (the text plugin's). */
export type SummaryValue = { tag: string; simpleValue: number } | { tag: string; text: string };

export interface TfEvent {
  /** Seconds since the epoch. */
  wallTime: number;
  step: number;
  /**
   * Exactly one of: the file's version (its first event), summary values, or a session start
   * (a run resumed at `step`: TensorBoard drops earlier files' points from that step on).
   */
  what: { fileVersion: string } | { summary: SummaryValue[] } | { sessionStart: true };
}

/** CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord checksums it. */
const CRC32C_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  return c >>> 0;
});

export function crc32c(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC32C_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked CRC (tensorflow/core/lib/hash/crc32c.h `Mask`): rotated, plus a constant. */
export function maskedCrc32c(bytes: Uint8Array): number {
  const c = crc32c(bytes);
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: length, its masked CRC, the data, the data's masked CRC. */
export function frameRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length + 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(data.length), true);
  view.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  view.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

// The few protobuf encodings an Event needs, by hand: this module stays free of npm imports (the
// GPU check's bundle carries no protobufjs). Wire types: 0 varint, 1 fixed64, 2 length-delimited,
// 5 fixed32.
type Bytes = Uint8Array;

function varint(n: number): Bytes {
  const out: number[] = [];
  // Non-negative integers below 2^53: division, not bit operations, past 32 bits.
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return Uint8Array.from(out);
}

function concat(parts: Bytes[]): Bytes {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const key = (field: number, wire: number) => varint(field * 8 + wire);
const int = (field: number, v: number) => concat([key(field, 0), varint(v)]);
const nested = (field: number, ...body: Bytes[]) => {
  const b = concat(body);
  return concat([key(field, 2), varint(b.length), b]);
};
const text = (field: number, v: string) => nested(field, new TextEncoder().encode(v));
function fixed(field: number, v: number, width: 4 | 8): Bytes {
  const b = new Uint8Array(width);
  const view = new DataView(b.buffer);
  if (width === 8) view.setFloat64(0, v, true);
  else view.setFloat32(0, v, true);
  return concat([key(field, width === 8 ? 1 : 5), b]);
}

/** The `Event` protobuf of `e`. */
export function encodeEvent(e: TfEvent): Uint8Array {
  // tensorflow/core/util/event.proto, Event: wall_time = 1 (double), step = 2 (int64),
  // oneof what { file_version = 3 (string), summary = 5 (Summary), session_log = 7 (SessionLog) }.
  const head = [fixed(1, e.wallTime, 8), int(2, e.step)];
  const what = e.what;
  if ("fileVersion" in what) return concat([...head, text(3, what.fileVersion)]);
  if ("summary" in what) return concat([...head, nested(5, ...what.summary.map(summaryValue))]);
  // event.proto, SessionLog: status = 1 (SessionStatus, START = 1).
  return concat([...head, nested(7, int(1, 1))]);
}

/** One of `Summary`'s values (tensorflow/core/framework/summary.proto: value = 1). */
function summaryValue(v: SummaryValue): Bytes {
  // summary.proto, Summary.Value: tag = 1 (string), simple_value = 2 (float),
  // tensor = 8 (TensorProto), metadata = 9 (SummaryMetadata).
  if ("simpleValue" in v) return nested(1, text(1, v.tag), fixed(2, v.simpleValue, 4));
  // The text plugin's summary, as PyTorch's SummaryWriter.add_text writes it: metadata naming
  // the plugin (summary.proto, SummaryMetadata: plugin_data = 1; PluginData: plugin_name = 1),
  // and a string tensor of shape [1] (tensor.proto: dtype = 1, tensor_shape = 2,
  // string_val = 8; types.proto: DT_STRING = 7; tensor_shape.proto: dim = 2, Dim.size = 1).
  return nested(
    1,
    text(1, v.tag),
    nested(9, nested(1, text(1, "text"))),
    nested(8, int(1, 7), nested(2, nested(2, int(1, 1))), text(8, v.text)),
  );
}

/** TensorBoard's file name: `events.out.tfevents.<seconds>.<host>.<pid>.<n>`. */
export function eventFileName(seconds: number, host: string, pid: number, n: number): string {
  return `events.out.tfevents.${String(Math.floor(seconds)).padStart(10, "0")}.${host}.${pid}.${n}`;
}

/** Whether `name` is an event file (TensorBoard reads every file whose name holds "tfevents"). */
export function isEventFileName(name: string): boolean {
  return name.startsWith("events.out.tfevents.");
}
