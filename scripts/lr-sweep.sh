#!/usr/bin/env bash
# How the default learning rate was chosen: for each bundled task, a short LoRA run (the
# demo's length) at several learning rates, each scored on the task's *valid* split by
# `tuna compare --strategies tuned` (the test split stays untouched). Prints one line per run;
# BENCHMARKS.md records the result.
#   scripts/lr-sweep.sh [STEPS] [LR...]        (default: 40 steps; 2e-4 5e-4 1e-3 2e-3 4e-3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps="${1:-40}"; shift || true
lrs=("$@"); [ ${#lrs[@]} -gt 0 ] || lrs=(2e-4 5e-4 1e-3 2e-3 4e-3)
model="$(scripts/fetch-model.sh)"
cargo build --release --locked -q
tuna=target/release/tuna
declare -A template=(
  [sentiment]=$'Classify the sentiment of this text as negative, neutral or positive.\n\nText: {prompt}'
  [pronunciation]='Spell out the ARPAbet pronunciation of: {prompt}'
)
declare -A limit=([sentiment]=200 [pronunciation]=100)
for task in sentiment pronunciation; do
  for lr in "${lrs[@]}"; do
    run="runs/sweep/$task-lr$lr"
    rm -rf "$run"
    $tuna train --model "$model" --data "data/example/$task/train.jsonl" \
      --valid "data/example/$task/valid.jsonl" --prompt-template "${template[$task]}" \
      --output "$run" --max-steps "$steps" --lr "$lr" --eval-every 0 --save-every 0 --quiet >/dev/null
    $tuna compare --model "$model" --adapter "$run" --data "data/example/$task/valid.jsonl" \
      --train "data/example/$task/train.jsonl" --strategies tuned --limit "${limit[$task]}" \
      --output "$run/valid-report" --json 2>/dev/null |
      python3 -c '
import json, sys
r = json.load(sys.stdin)
row = r["rows"][0]
metrics = "  ".join("%s %.3f [%.3f, %.3f]" % (m["name"], m["value"], m["low"], m["high"]) for m in row["metrics"])
nll = row.get("label_nll")
extra = "  label-nll %.3f (prior floor %.3f)" % (nll, r["prior_floor_nll"]) if nll is not None else ""
print("%-14s lr %5s: %s%s" % (sys.argv[1], sys.argv[2], metrics, extra))
' "$task" "$lr"
  done
done
