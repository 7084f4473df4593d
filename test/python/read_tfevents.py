"""Reads TensorBoard event files with nothing of the writer's: its own CRC-32C, and protobuf
messages compiled by protoc from a subset of TensorFlow's .proto files (field numbers copied from
them, quoted by file below).

usage: read_tfevents.py DIR

Checks every record of every events.out.tfevents.* file in DIR (length, the masked CRC-32C of the
length, the data, the masked CRC-32C of the data) and prints one JSON document: per file, its
events (wall_time, step, and file_version, session_log or the summary's values). Exits 1 naming
the file and record of the first bad one.
"""

import importlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

# tensorflow/core/util/event.proto (Event, SessionLog) and tensorflow/core/framework/summary.proto
# (Summary, Summary.Value, SummaryMetadata), tensor.proto (TensorProto), tensor_shape.proto
# (TensorShapeProto), types.proto (DataType): only the fields the writer may use.
EVENT_PROTO = """
syntax = "proto3";
package tensorflow;

// tensorflow/core/framework/types.proto
enum DataType {
  DT_INVALID = 0;
  DT_FLOAT = 1;
  DT_STRING = 7;
}

// tensorflow/core/framework/tensor_shape.proto
message TensorShapeProto {
  message Dim {
    int64 size = 1;
    string name = 2;
  }
  repeated Dim dim = 2;
  bool unknown_rank = 3;
}

// tensorflow/core/framework/tensor.proto
message TensorProto {
  DataType dtype = 1;
  TensorShapeProto tensor_shape = 2;
  int32 version_number = 3;
  bytes tensor_content = 4;
  repeated float float_val = 5 [packed = true];
  repeated bytes string_val = 8;
}

// tensorflow/core/framework/summary.proto
message SummaryMetadata {
  message PluginData {
    string plugin_name = 1;
    bytes content = 2;
  }
  PluginData plugin_data = 1;
  string display_name = 2;
  string summary_description = 3;
  DataClass data_class = 4;
}

// tensorflow/core/framework/summary.proto
enum DataClass {
  DATA_CLASS_UNKNOWN = 0;
  DATA_CLASS_SCALAR = 1;
  DATA_CLASS_TENSOR = 2;
  DATA_CLASS_BLOB_SEQUENCE = 3;
}

// tensorflow/core/framework/summary.proto
message Summary {
  message Value {
    string node_name = 7;
    string tag = 1;
    SummaryMetadata metadata = 9;
    oneof value {
      float simple_value = 2;
      bytes obsolete_old_style_histogram = 3;
      TensorProto tensor = 8;
    }
  }
  repeated Value value = 1;
}

// tensorflow/core/util/event.proto
message SessionLog {
  enum SessionStatus {
    STATUS_UNSPECIFIED = 0;
    START = 1;
    STOP = 2;
    CHECKPOINT = 3;
  }
  SessionStatus status = 1;
  string checkpoint_path = 2;
  string msg = 3;
}

// tensorflow/core/util/event.proto
message Event {
  double wall_time = 1;
  int64 step = 2;
  oneof what {
    string file_version = 3;
    bytes graph_def = 4;
    Summary summary = 5;
    SessionLog session_log = 7;
    bytes meta_graph_def = 9;
  }
}
"""


def crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def compile_protos():
    with tempfile.TemporaryDirectory(prefix="tfevents_pb_") as out:
        with open(os.path.join(out, "tfevent_subset.proto"), "w") as f:
            f.write(EVENT_PROTO)
        subprocess.run(
            ["protoc", f"--proto_path={out}", f"--python_out={out}", "tfevent_subset.proto"],
            check=True,
        )
        sys.path.insert(0, out)
        module = importlib.import_module("tfevent_subset_pb2")
        sys.path.remove(out)
        return module


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    at, n = 0, 0
    while at < len(data):
        if len(data) - at < 12:
            raise ValueError(f"record {n}: {len(data) - at} bytes left, a header needs 12")
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[at + 8:at + 12])
        if masked(header) != length_crc:
            raise ValueError(f"record {n}: the length's CRC {length_crc:#x} != {masked(header):#x}")
        body = data[at + 12:at + 12 + length]
        if len(body) != length or len(data) < at + 16 + length:
            raise ValueError(f"record {n}: cut short")
        (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        if masked(body) != body_crc:
            raise ValueError(f"record {n}: the data's CRC {body_crc:#x} != {masked(body):#x}")
        yield body
        at += 16 + length
        n += 1


def value_json(pb, v):
    out = {"tag": v.tag}
    kind = v.WhichOneof("value")
    if kind == "simple_value":
        x = v.simple_value
        out["simple_value"] = x if math.isfinite(x) else str(x)
    elif kind == "tensor":
        t = v.tensor
        out["plugin"] = v.metadata.plugin_data.plugin_name
        out["dtype"] = pb.DataType.Name(t.dtype)
        out["shape"] = [d.size for d in t.tensor_shape.dim]
        out["text"] = [s.decode("utf-8") for s in t.string_val]
    else:
        out["other"] = kind
    return out


def event_json(pb, e):
    out = {"wall_time": e.wall_time, "step": e.step}
    kind = e.WhichOneof("what")
    if kind == "file_version":
        out["file_version"] = e.file_version
    elif kind == "session_log":
        out["session_log"] = pb.SessionLog.SessionStatus.Name(e.session_log.status)
    elif kind == "summary":
        out["values"] = [value_json(pb, v) for v in e.summary.value]
    else:
        out["other"] = kind
    return out


def main():
    assert crc32c(b"123456789") == 0xE3069283, "crc32c fails its check value"
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    pb = compile_protos()
    folder = sys.argv[1]
    files = []
    for name in sorted(os.listdir(folder)):
        if "tfevents" not in name:
            continue
        events = []
        try:
            for body in records(os.path.join(folder, name)):
                e = pb.Event()
                e.ParseFromString(body)
                events.append(event_json(pb, e))
        except ValueError as err:
            print(f"{name}: {err}", file=sys.stderr)
            sys.exit(1)
        files.append({"name": name, "events": events})
    print(json.dumps({"files": files}, indent=1))


if __name__ == "__main__":
    main()
