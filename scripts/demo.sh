#!/usr/bin/env bash
# The main job on the default model, end to end. For now: fetch SmolLM2-135M-Instruct, build,
# ask it something through its chat template, and score it on sample text. (Training, evaluation and the prompt-vs-tune
# comparison join this script as they land.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model="$(scripts/fetch-model.sh)"
cargo build --release --locked
tuna=target/release/tuna
echo "== tuna generate --chat (SmolLM2-135M-Instruct, greedy)" >&2
$tuna generate --model "$model" --chat --prompt "Give me three tips for writing clear commit messages." --max-new-tokens 120
echo "== tuna data validate (the bundled sentiment example)" >&2
$tuna data validate --model "$model" data/example/sentiment/train.jsonl data/example/sentiment/valid.jsonl
echo "== tuna eval (loss and perplexity on data/example/text-sample.jsonl)" >&2
$tuna eval --model "$model" --data data/example/text-sample.jsonl
