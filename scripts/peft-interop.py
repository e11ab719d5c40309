#!/usr/bin/env python3
"""PEFT interop, both ways, on the default model (not run in CI; needs the reference venv of
../shared/bench: torch, transformers, peft).

1. tuna -> PEFT: an adapter trained by `tuna train` loads with `peft.PeftModel.from_pretrained`
   on the base model in transformers, and gives the loss tuna gives.
2. PEFT -> tuna: an adapter made by PEFT (rsLoRA, a subset of modules, some layers only,
   rank_pattern and alpha_pattern, random B) loads with `tuna eval --adapter`, and tuna gives the loss PEFT gives.

The base model for transformers is `tuna export` of the GGUF without an adapter (an HF
directory). Losses: mean next-token NLL over a text record plus EOS, as `tuna eval` scores text
records. Prints one line per check and exits non-zero if any differs by more than 1e-3.

    .venv-ref/bin/python scripts/peft-interop.py [--tuna target/release/tuna] [--work DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening, trimmed the wick, and "
    "watched the ships pass safely beyond the rocks."
)
TOLERANCE = 1e-3


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return out.stdout


def tuna_loss(tuna, model, adapter, data):
    cmd = [tuna, "eval", "--model", model, "--data", data, "--json"]
    if adapter:
        cmd += ["--adapter", adapter]
    return json.loads(run(cmd))["loss"]


def torch_loss(model, tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, x[0, 1:]).item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tuna", default="target/release/tuna")
    p.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--work", default=None)
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="tuna-peft-")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "text.jsonl")
    with open(data, "w") as f:
        f.write(json.dumps({"text": TEXT}) + "\n")
    base_dir = os.path.join(work, "base-hf")
    run([a.tuna, "export", "--model", a.model, "--output", base_dir, "--force"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.eval()
    failures = 0

    def check(name, ours, theirs):
        nonlocal failures
        ok = abs(ours - theirs) <= TOLERANCE
        failures += not ok
        print(f"{name}: tuna {ours:.6f}  transformers/peft {theirs:.6f}  diff {abs(ours - theirs):.2e}  {'ok' if ok else 'FAIL'}")

    check("base model", tuna_loss(a.tuna, base_dir, None, data), torch_loss(base, tokenizer))

    # 1. tuna -> PEFT: a short real run of tuna train, then PeftModel.from_pretrained.
    run_dir = os.path.join(work, "tuna-run")
    subprocess.run(["rm", "-rf", run_dir])
    run([a.tuna, "train", "--model", a.model, "--data", "data/example/sentiment/train.jsonl",
         "--output", run_dir, "--max-steps", "8", "--lora-r", "8", "--eval-every", "0", "--quiet"])
    adapter = os.path.join(run_dir, "adapter")
    tuned = PeftModel.from_pretrained(base, adapter)
    tuned.eval()
    check("tuna adapter in PEFT", tuna_loss(a.tuna, a.model, adapter, data), torch_loss(tuned, tokenizer))
    base = tuned.unload()

    # 2. PEFT -> tuna: rsLoRA on q/v/down of layers 0-9, per-module ranks and alphas, B random.
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, use_rslora=True, lora_dropout=0.0,
                        target_modules=["q_proj", "v_proj", "down_proj"],
                        layers_to_transform=list(range(10)), task_type="CAUSAL_LM",
                        rank_pattern={"down_proj": 4},
                        alpha_pattern={r"model\.layers\.3\.self_attn\.v_proj": 64})
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    peft_model.eval()
    peft_dir = os.path.join(work, "peft-adapter")
    peft_model.save_pretrained(peft_dir)
    check("PEFT adapter in tuna", tuna_loss(a.tuna, a.model, peft_dir, data), torch_loss(peft_model, tokenizer))
    print(f"work dir: {work}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
