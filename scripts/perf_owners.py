#!/usr/bin/env python3
"""Where one thread's CPU time goes, by owner: reads `perf script` output (call graphs, V8's
--perf-basic-prof symbols) and charges each sample to the owner of its innermost JavaScript frame
(the gRPC client, the gRPC server, Deno's node:http2, this project's RPC layer, ...); samples with
no JavaScript frame at all (the runtime's Rust, V8's own work such as GC, the kernel, malloc) are
`native`. Prints each owner's share and, given the number of calls the samples cover and the
sampling period, its milliseconds per call.

    perf script -i perf.data | scripts/perf_owners.py --calls 1500 --period-ms 0.1
    ... | scripts/perf_owners.py --calls 1500 --detail "Deno, other"   # its innermost frames
"""
import argparse
import collections
import re
import signal
import sys

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing quietly

# First match wins, checked against the innermost JavaScript frame of each sample.
OWNERS = [
    ("grpc-js client", r"grpc-js/build/src/(client|call|load-balancing|resolving|subchannel"
     r"|transport|channel|internal-channel|make-client|compression|filter|picker"
     r"|retrying|deadline)"),
    ("grpc-js server", r"grpc-js/build/src/server"),
    ("grpc-js, both sides (metadata, framing)", r"grpc-js/build/src/"),
    # protobufjs's generated code has no file: Type$encode, Type$fromObject, ...
    ("protobuf (proto-loader, protobufjs)",
     r"proto-loader|protobufjs|\$(encode|decode|fromObject|toObject|verify) "),
    ("client.ts", r"/client/client\.ts"),
    ("rpc layer (server/rpc)", r"/server/rpc/"),
    ("registry", r"/server/registry/"),
    ("engine worker messages", r"worker_engine|11_workers|13_message_port"),
    ("serving, templates, tokenizer, model", r"/server/(serving|prompts|model)/"),
    ("other project code", r"/work/|file:///"),
    ("Deno node:http2", r"deno_node/(http2|internal/http2)"),
    ("Deno streams and sockets", r"deno_node/(internal/stream|internal_binding|net|_stream)"),
    ("Deno timers, ticks, promises", r"timers|_next_tick|ext:core/"),
    ("Deno file system", r"ext:deno_fs/"),
    ("Deno events", r"deno_node/_events"),
    ("Deno, other", r"ext:"),
]


def samples(lines):
    """Yields each sample's frames, innermost first."""
    frames = []
    for line in lines:
        if not line.strip():
            if frames:
                yield frames
            frames = []
        elif line[0] in " \t":
            parts = line.strip().split(" ", 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
    if frames:
        yield frames


NATIVE = "native (no JavaScript frame: runtime, GC, kernel, malloc)"


def owner(frames):
    """The sample's owner and the frame that decided it."""
    for f in frames:
        if "JS:" not in f:
            continue
        for name, pattern in OWNERS:
            if re.search(pattern, f):
                return name, f
        return "JavaScript, unattributed", f
    return NATIVE, frames[0]


def symbol(frame):
    """A frame without its offset and object file."""
    return re.sub(r"\+0x[0-9a-f]+ \(.*\)$|\s\(.*\)$", "", frame)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=float, help="calls the samples cover")
    ap.add_argument("--period-ms", type=float, default=0.1, help="sampling period (perf -F)")
    ap.add_argument("--detail", metavar="OWNER", help="list that owner's deciding frames instead")
    a = ap.parse_args()
    owned = [owner(s) for s in samples(sys.stdin)]
    if a.detail:
        owned = [(symbol(f), f) for name, f in owned if name == a.detail]
    counts = collections.Counter(name for name, _ in owned)
    total = len(owned)
    if total == 0:
        sys.exit("perf_owners: no samples (with --detail: none of that owner)")
    for name, n in counts.most_common(30 if a.detail else None):
        per_call = f"  {n * a.period_ms / a.calls:.3f} ms/call" if a.calls else ""
        print(f"{100 * n / total:6.2f}%{per_call}  {name}")
    if a.calls:
        print(f"{total * a.period_ms / a.calls:.3f} ms/call on this thread in all ({total} samples)")


if __name__ == "__main__":
    main()
