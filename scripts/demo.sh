#!/usr/bin/env bash
# The main job on the default model, end to end: fetch SmolLM2-135M-Instruct, build, check the
# bundled sentiment data, fine-tune a LoRA adapter on it (a short run), score base vs tuned on
# the held-out split, then `tuna compare`: every prompting strategy against the adapter on the
# test split, written to runs/demo-sentiment/compare/report.html (and .md, .json).
#   DEMO_STEPS (default 40) training steps; DEMO_LIMIT (default 200) test rows.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model="$(scripts/fetch-model.sh)"
cargo build --release --locked
tuna="${CARGO_TARGET_DIR:-target}/release/tuna"
run=runs/demo-sentiment
template=$'Classify the sentiment of this text as negative, neutral or positive.\n\nText: {prompt}'
steps="${DEMO_STEPS:-40}"

echo "== tuna data validate" >&2
$tuna data validate --model "$model" --prompt-template "$template" \
  data/example/sentiment/train.jsonl data/example/sentiment/valid.jsonl

echo "== tuna train ($steps steps, LoRA r=16 on all projections)" >&2
rm -rf "$run"
$tuna train -c configs/smollm2-135m-lora.toml --model "$model" --output "$run" \
  --max-steps "$steps" --eval-every 20 --save-every 20

echo "== tuna eval: base vs tuned on the held-out split (completion loss)" >&2
$tuna eval --model "$model" --data data/example/sentiment/valid.jsonl --prompt-template "$template" --limit 100
$tuna eval --model "$model" --adapter "$run" --data data/example/sentiment/valid.jsonl --prompt-template "$template" --limit 100

limit="${DEMO_LIMIT:-200}"
echo "== tuna compare: zero/one/few-shot, chain-of-thought, tuned, hybrid on $limit test rows" >&2
$tuna compare --model "$model" --adapter "$run" --data data/example/sentiment/test.jsonl \
  --limit "$limit" --cot-limit "$(( limit / 4 ))" --shot-draws 2 --output "$run/compare" > /dev/null

echo "== the report: $run/compare/report.html (also report.md, report.json)" >&2
sed -n '/^## Recommendation/,/^## Scoring/p' "$run/compare/report.md" | sed '/^Scoring/q' >&2

# Test rows the report scored, each strategy's answer beside the reference (not one
# hand-written prompt: a single example says nothing about which strategy is better).
echo "== test rows side by side (from the report)" >&2
awk '/^## Side by side/ { on = 1 } on && /^$/ && blank++ { exit } on' "$run/compare/report.md" >&2
echo "== talk to both: $tuna chat --model $model --adapter $run --compare" >&2
