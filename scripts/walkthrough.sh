#!/usr/bin/env bash
# The README walk-through end to end on the shipped model, and its test-split figures:
#   1. p-tune sentiment and intent_and_slot together (examples/sentiment_intent_p_tuning.yaml);
#   2. prompt-tune squad beside them, which stay untouched (examples/squad_prompt_tuning.yaml);
#   3. evaluate each task on its test split (squad against every gold answer, and the official
#      evaluate-v2.0.py on the same predictions);
#   4. one Infer call over all three tasks (examples/three_tasks.jsonl) through the service.
# Usage: scripts/walkthrough.sh [OUT_DIR]   (default /tmp/walkthrough; it is emptied first)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/walkthrough}"
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}"
D=node_modules/deno/deno
REG="$OUT/registry"
rm -rf "$OUT"
mkdir -p "$OUT"
step() { echo "== $*" >&2; }

step "1. p-tune sentiment + intent_and_slot"
$D task train --config examples/sentiment_intent_p_tuning.yaml --data-dir data --registry "$REG" \
  --runs "$OUT/runs" --quiet >"$OUT/step1.json"
sha256sum "$REG"/sentiment/v1/table.safetensors "$REG"/intent_and_slot/v1/table.safetensors \
  >"$OUT/step1.sha256"

step "2. prompt-tune squad beside them"
$D task train --config examples/squad_prompt_tuning.yaml --data-dir data --registry "$REG" \
  --runs "$OUT/runs" --quiet >"$OUT/step2.json"
# The two p-tuned tasks are byte-identical after the squad run.
sha256sum --check --quiet "$OUT/step1.sha256"

step "3. test splits"
$D task eval --task sentiment --data data/splits/sentiment_test.jsonl --registry "$REG" \
  --config examples/sentiment_intent_p_tuning.yaml --max-new 3 >"$OUT/eval_sentiment.json"
$D task eval --task intent_and_slot --data data/splits/intent_and_slot_test.jsonl \
  --registry "$REG" --config examples/sentiment_intent_p_tuning.yaml >"$OUT/eval_intent_and_slot.json"
$D task eval --task squad --data data/splits/squad_test.jsonl --registry "$REG" \
  --config examples/squad_prompt_tuning.yaml --predictions-out "$OUT/squad_predictions.json" \
  >"$OUT/eval_squad.json"
# The official scorer expects a prediction for every question of its data file: it gets the raw
# file cut down to the test split's questions.
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
preds = json.load(open(f"{out}/squad_predictions.json"))
raw = json.load(open("data/raw/squad_v2/dev-v2.0.reconstructed_from_explorer.json"))
for a in raw["data"]:
    for p in a["paragraphs"]:
        p["qas"] = [q for q in p["qas"] if q["id"] in preds]
json.dump(raw, open(f"{out}/squad_test_gold.json", "w"))
PY
python3 data/raw/squad_v2/evaluate-v2.0.py "$OUT/squad_test_gold.json" \
  "$OUT/squad_predictions.json" >"$OUT/squad_official.json"

step "4. one Infer over the three tasks"
PORT="${PORT:-50197}"
$D run -A server/main.ts --port "$PORT" --registry-dir "$REG" --runs-dir "$OUT/runs" \
  2>"$OUT/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if $D run -A client/cli.ts --address "127.0.0.1:$PORT" health >/dev/null 2>&1; then break; fi
  sleep 1
done
$D run -A client/cli.ts --address "127.0.0.1:$PORT" infer examples/three_tasks.jsonl \
  >"$OUT/infer.jsonl"
kill -TERM $SERVER
wait $SERVER || true

step "figures"
for f in eval_sentiment eval_intent_and_slot eval_squad; do
  echo "$f: $(cat "$OUT/$f.json")"
done
echo "official evaluate-v2.0.py on the squad predictions: $(tr -d '\n' <"$OUT/squad_official.json")"
echo "infer: $(wc -l <"$OUT/infer.jsonl") results"
