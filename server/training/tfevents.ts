/**
 * TensorBoard's event file format, written without TensorFlow: a file of records, each TFRecord
 * framing (tensorflow/core/lib/io/record_writer.cc: uint64 length, little-endian; masked CRC32C of
 * those 8 bytes; the data; masked CRC32C of the data) around one serialised `Event` protobuf.
 * Field numbers are TensorFlow's, quoted by file at each message below.
 */
import pb from "protobufjs/minimal.js";

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

// Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
const key = (field: number, wire: number) => (field << 3) | wire;

/** The `Event` protobuf of `e`. */
export function encodeEvent(e: TfEvent): Uint8Array {
  const w = pb.Writer.create();
  // tensorflow/core/util/event.proto, Event: wall_time = 1 (double), step = 2 (int64),
  // oneof what { file_version = 3 (string), summary = 5 (Summary), session_log = 7 (SessionLog) }.
  w.uint32(key(1, 1)).double(e.wallTime);
  w.uint32(key(2, 0)).int64(e.step);
  const what = e.what;
  if ("fileVersion" in what) {
    w.uint32(key(3, 2)).string(what.fileVersion);
  } else if ("summary" in what) {
    w.uint32(key(5, 2)).fork();
    for (const v of what.summary) writeValue(w, v);
    w.ldelim();
  } else {
    // event.proto, SessionLog: status = 1 (SessionStatus, START = 1).
    w.uint32(key(7, 2)).fork().uint32(key(1, 0)).uint32(1).ldelim();
  }
  return w.finish();
}

/** Appends one of `Summary`'s values (tensorflow/core/framework/summary.proto: value = 1). */
function writeValue(w: pb.Writer, v: SummaryValue): void {
  // summary.proto, Summary.Value: tag = 1 (string), simple_value = 2 (float),
  // tensor = 8 (TensorProto), metadata = 9 (SummaryMetadata).
  w.uint32(key(1, 2)).fork();
  w.uint32(key(1, 2)).string(v.tag);
  if ("simpleValue" in v) {
    w.uint32(key(2, 5)).float(v.simpleValue);
  } else {
    // The text plugin's summary, as PyTorch's SummaryWriter.add_text writes it: metadata naming
    // the plugin (summary.proto, SummaryMetadata: plugin_data = 1; PluginData: plugin_name = 1),
    // and a string tensor of shape [1] (tensor.proto: dtype = 1, tensor_shape = 2,
    // string_val = 8; types.proto: DT_STRING = 7; tensor_shape.proto: dim = 2, Dim.size = 1).
    w.uint32(key(9, 2)).fork();
    w.uint32(key(1, 2)).fork().uint32(key(1, 2)).string("text").ldelim();
    w.ldelim();
    w.uint32(key(8, 2)).fork();
    w.uint32(key(1, 0)).uint32(7);
    w.uint32(key(2, 2)).fork().uint32(key(2, 2)).fork().uint32(key(1, 0)).int64(1).ldelim()
      .ldelim();
    w.uint32(key(8, 2)).bytes(new TextEncoder().encode(v.text));
    w.ldelim();
  }
  w.ldelim();
}

/** TensorBoard's file name: `events.out.tfevents.<seconds>.<host>.<pid>.<n>`. */
export function eventFileName(seconds: number, host: string, pid: number, n: number): string {
  return `events.out.tfevents.${String(Math.floor(seconds)).padStart(10, "0")}.${host}.${pid}.${n}`;
}

/** Whether `name` is an event file (TensorBoard reads every file whose name holds "tfevents"). */
export function isEventFileName(name: string): boolean {
  return name.startsWith("events.out.tfevents.");
}
