#!/usr/bin/env python3
"""Writes tests/data/peft-fixture/: an adapter saved by PEFT itself, for the tiny Llama that
tuna's tests build (hidden 32, ffn 64, 2 layers, 4 heads / 2 kv heads; the vocabulary
size is irrelevant to the adapter).

The adapter uses what PEFT users set: rsLoRA, a regex rank_pattern and alpha_pattern, a subset
of modules named by suffix, one layer only, and random B (PEFT starts B at zero). Beside it,
expected_delta.safetensors holds PEFT's own `get_delta_weight` for every adapted module, so
the Rust test checks tuna's scale and layout against PEFT's arithmetic, not its own.

Not run in CI (needs the reference venv of ../shared/bench); the output is committed:

    .venv-ref/bin/python scripts/make-peft-fixture.py
"""

import os
import shutil

import peft
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "peft-fixture")


def main():
    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    )
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["self_attn.q_proj", "v_proj", "mlp.down_proj"],
        layers_to_transform=[1],
        rank_pattern={"v_proj": 2},
        alpha_pattern={r"model\.layers\.1\.mlp\.down_proj": 3},
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    deltas = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, peft.tuners.lora.Linear):
                module.lora_B["default"].weight.normal_(0, 0.5)
                key = name.removeprefix("base_model.model.")
                deltas[key] = module.get_delta_weight("default").contiguous()
    shutil.rmtree(OUT, ignore_errors=True)
    model.save_pretrained(OUT)
    os.remove(os.path.join(OUT, "README.md"))  # PEFT's model card: not part of the adapter
    save_file(deltas, os.path.join(OUT, "expected_delta.safetensors"))
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))
    print("modules:", sorted(deltas))


if __name__ == "__main__":
    main()
