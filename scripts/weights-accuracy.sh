#!/usr/bin/env bash
# What each --weights form costs in accuracy, on the default model and the bundled data:
#   1. the loss of the base model on the text sample and on both example tasks' valid
#      splits, per form, against f32;
#   2. a sentiment adapter trained over each form (STEPS steps, the demo's recipe), scored
#      by `tuna eval --strategies tuned` (accuracy on the valid split) on the base it was
#      trained over and on the f32 base.
# Prints one table row per measurement (markdown), for BENCHMARKS.md.
#   FORMS (default "f32 bf16 q8_0 q4_k file"), STEPS (default 40), OUT (default runs/weights-accuracy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model="$(scripts/fetch-model.sh)"
tuna="${CARGO_TARGET_DIR:-target}/release/tuna"
forms="${FORMS:-f32 bf16 q8_0 q4_k file}"
steps="${STEPS:-40}"
out="${OUT:-runs/weights-accuracy}"
template=$'Classify the sentiment of this text as negative, neutral or positive.\n\nText: {prompt}'
pron_template=$'Word: {prompt}\nPronunciation:'
mkdir -p "$out"

field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.4f" % eval(sys.argv[1], {}, {"d": d}))' "$1"; }

echo "| weights | text-sample loss | sentiment valid loss | pronunciation valid loss |"
echo "|---|---|---|---|"
for w in $forms; do
  a=$($tuna eval --model "$model" --weights "$w" --data data/example/text-sample.jsonl --json 2>/dev/null | field 'd["loss"]')
  b=$($tuna eval --model "$model" --weights "$w" --data data/example/sentiment/valid.jsonl --prompt-template "$template" --json 2>/dev/null | field 'd["loss"]')
  c=$($tuna eval --model "$model" --weights "$w" --data data/example/pronunciation/valid.jsonl --prompt-template "$pron_template" --json 2>/dev/null | field 'd["loss"]')
  echo "| $w | $a | $b | $c |"
done

echo
echo "| trained over | steps | final valid loss | accuracy on its base | accuracy on the f32 base |"
echo "|---|---|---|---|---|"
for w in $forms; do
  run="$out/sentiment-$w"
  rm -rf "$run"
  $tuna train -c configs/smollm2-135m-lora.toml --model "$model" --output "$run" --weights "$w" \
    --max-steps "$steps" --eval-every "$steps" --save-every "$steps" >"$out/train-$w.log" 2>&1
  loss=$(tail -n 50 "$run/metrics.jsonl" | grep '"event":"eval"' | tail -n 1 | field 'd["loss"]')
  acc() {
    $tuna eval --model "$model" --weights "$1" --adapter "$run" --data data/example/sentiment/valid.jsonl \
      --strategies tuned --json 2>/dev/null | field '[m["value"] for s in d["strategies"] if s["key"] == "tuned" for m in s["metrics"] if m["metric"] == "accuracy"][0]'
  }
  echo "| $w | $steps | $loss | $(acc "$w") | $(acc f32) |"
done
