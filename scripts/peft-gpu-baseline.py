#!/usr/bin/env python3
"""The GPU peer of `tuna bench train --device cuda`: the workload of
../shared/bench/peft_cpu_baseline.py (PyTorch + transformers + PEFT, LoRA r16 alpha 32 dropout 0 on
q/k/v/o/gate/up/down, AdamW lr 2e-4, seeded random-token batches, causal-LM loss over every token,
warm-up steps then timed steps), moved to CUDA.

  python3 scripts/peft-gpu-baseline.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --batch 4 --seq 256 --steps 10 --warmup 3 --autocast bf16

The model is the GGUF dequantized to float32 by transformers (needs the `gguf` package); LoRA
weights and AdamW stay float32; `--autocast bf16` runs the forward under
torch.autocast("cuda", bfloat16), as HF Trainer's bf16=True does. Each step is timed between
torch.cuda.synchronize() calls. `--device cpu` runs the same loop on the CPU (to try the script
on a machine without a GPU; ../shared/bench is the CPU reference). The last stdout line is one JSON object.
"""
import argparse
import json
import os
import statistics
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autocast", choices=["none", "bf16"], default="none")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to try the script)")
    args = p.parse_args()

    import contextlib
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    d, fn = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fn, dtype=torch.float32,
                                                 attn_implementation="sdpa").to(dev)
    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
                     task_type="CAUSAL_LM", bias="none")
    pm = get_peft_model(model, cfg)
    pm.train()
    params = [q for q in pm.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(dev) for _ in range(4)]
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if args.autocast == "bf16" \
        else contextlib.nullcontext
    ntok = args.batch * args.seq
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        x = batches[step % len(batches)]
        sync()
        t0 = time.perf_counter()
        with ctx():
            loss = pm(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        print(f"[train] step {step} loss {losses[-1]:.4f} {dt * 1e3:.1f} ms {ntok / dt:.0f} tok/s",
              file=sys.stderr, flush=True)
        if step >= args.warmup:
            times.append(dt)
    res = {
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "torch": torch.__version__,
        "autocast": args.autocast,
        "batch": args.batch,
        "seq": args.seq,
        "trainable_params": sum(q.numel() for q in params),
        "tokens_per_sec_median": ntok / statistics.median(times),
        "sec_per_step_median": statistics.median(times),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "losses": losses,
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
