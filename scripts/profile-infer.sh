#!/usr/bin/env bash
# Where a one-request Infer call's event-loop time goes: runs bench/request_latency.ts --profile
# (service and gRPC client in one process, the engine in its worker), attaches `perf record` to the
# event-loop thread once the calls are in steady state, and charges the samples to their owners
# (scripts/perf_owners.py): the gRPC client and server, protobuf, Deno's node:http2, this
# project's RPC layer and serving code, native work. Needs Linux perf (Debian: linux-perf).
#
#   scripts/profile-infer.sh [SECONDS]     # default 10
# Writes .bench/profile-infer.txt (the table), .bench/profile-infer.json (the calls) and
# .bench/profile-infer.perf.gz (the resolved samples, for scripts/perf_owners.py --detail OWNER).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
deno=node_modules/deno/deno
out=.bench
mkdir -p "$out"
command -v perf >/dev/null || { echo "profile-infer: perf not found (apt-get install linux-perf)" >&2; exit 1; }

log="$out/profile-infer.log"
# The loop outlives the recording by a margin on both sides.
# --perf-basic-prof writes /tmp/perf-<pid>.map (perf's JIT symbols) and a V8 log per isolate.
"$deno" run -A --v8-flags=--perf-basic-prof,--logfile=/tmp/profile-infer-v8-%p.log \
  bench/request_latency.ts --profile "$((seconds + 4))" \
  >"$out/profile-infer.json" 2>"$log" &
pid=$!
cleanup() { rm -f "/tmp/perf-$pid.map" /tmp/isolate-*-profile-infer-v8-"$pid".log; }
trap 'kill "$pid" 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 600); do
  grep -q '^steady' "$log" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "profile-infer: the loop exited" >&2; exit 1; }
  sleep 0.2
done
grep -q '^steady' "$log" || { echo "profile-infer: no steady state after 120 s" >&2; exit 1; }
sleep 1
# The main thread's id is the process id; 10 kHz: one sample per 0.1 ms.
perf record -q -F 10000 -g -t "$pid" -o "$out/profile-infer.data" -- sleep "$seconds" 2>/dev/null
wait "$pid"
trap - EXIT
# Calls inside the recording: the loop's rate over the seconds recorded.
calls=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['calls']/d['profile_s']*$seconds)" \
  "$out/profile-infer.json")
# JIT symbols resolve through /tmp/perf-<pid>.map, which goes with the process: keep the text.
perf script -i "$out/profile-infer.data" 2>/dev/null | gzip >"$out/profile-infer.perf.gz"
cleanup
rm -f "$out/profile-infer.data"
zcat "$out/profile-infer.perf.gz" | python3 scripts/perf_owners.py --calls "$calls" |
  tee "$out/profile-infer.txt"
echo "calls: $(cat "$out/profile-infer.json")"
echo "drill down: zcat $out/profile-infer.perf.gz | scripts/perf_owners.py --calls $calls --detail OWNER"
