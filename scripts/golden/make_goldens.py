#!/usr/bin/env python3
"""Golden tokenizer / chat-template reference values from Hugging Face transformers.

Builds the tokenizer from the GGUF file exactly as
`AutoTokenizer.from_pretrained(dir, gguf_file=...)` does, and writes
`smollm2_goldens.json` and `smollm2_tokenizer.json` next to this script.

Setup (no torch needed):
    python3 -m venv /work/.venv-golden
    /work/.venv-golden/bin/pip install transformers tokenizers jinja2 gguf numpy sentencepiece protobuf
    HF_HUB_OFFLINE=1 /work/.venv-golden/bin/python scripts/golden/make_goldens.py [path/to/model.gguf]

Torch workaround: transformers' GGUF metadata reader
(`transformers/integrations/gguf/reader.py`, and `dequant.py` which it imports)
does `import torch` at module level, only to name tensor dtypes used when loading
weights. Reading metadata (`read_gguf_metadata`) never touches torch. So we put a
throw-away stub `torch` module into `sys.modules` only while importing that reader,
then remove it again; everything after that (metadata parsing, tokenizer build,
chat template) is unmodified transformers code.
"""

import json
import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import tokenizers  # noqa: E402
import transformers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_GGUF = os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def _import_gguf_reader_without_torch():
    """Import transformers' GGUF reader with a temporary stub `torch` (see module doc)."""
    try:
        import torch  # noqa: F401  (real torch present: nothing to do)
        return "real torch"
    except ImportError:
        pass

    class _Dummy:
        def __getattr__(self, name):
            return _Dummy()

        def __call__(self, *a, **k):
            return _Dummy()

    stub = types.ModuleType("torch")
    stub.__getattr__ = lambda name: _Dummy()  # torch.float32, torch.Tensor, torch.device, ...
    nn_stub = types.ModuleType("torch.nn")
    nn_stub.__getattr__ = lambda name: _Dummy()
    stub.nn = nn_stub
    sys.modules["torch"] = stub
    sys.modules["torch.nn"] = nn_stub
    try:
        import transformers.integrations.gguf.reader  # noqa: F401
    finally:
        del sys.modules["torch"]
        del sys.modules["torch.nn"]
    return "stub torch during import of transformers.integrations.gguf.reader"


TEXTS = [
    "The capital of France is Paris. The capital of Germany is",
    "Hello, world!",
    "1234567 + 89 = 1234656",
    "emoji: 🦀🐟 and café ünïcödé",
    "  leading spaces\tand\ttabs\n\nnewlines",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "",
    "a<|endoftext|>b",
]

CHATS = [
    ([{"role": "user", "content": "What is 2+2?"}], True),
    ([{"role": "user", "content": "What is 2+2?"}], False),
    (
        [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Arr!"},
            {"role": "user", "content": "Bye"},
        ],
        True,
    ),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], False),
]

DIVERGENCE_TEXTS = ["x  89", "a   1 2", "year\n\n2024", "costs  $100", "1234567 + 89 = 1234656"]

EXPECTED = {
    TEXTS[0]: [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 4521, 314],
    TEXTS[5]: [1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198],
}


def _ids(x):
    # apply_chat_template(tokenize=True) may return a list, or a BatchEncoding/dict with input_ids
    if isinstance(x, dict) or hasattr(x, "keys"):
        x = x["input_ids"]
    return [int(i) for i in x]


def main():
    gguf_path = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF)
    torch_note = _import_gguf_reader_without_torch()

    from transformers import AutoTokenizer

    # For architectures outside GGUF_CONFIG_ARCHS (e.g. "llama"), AutoTokenizer builds the model config
    # with `load_gguf_checkpoint(path, return_tensors=False)`, which refuses to run unless
    # `is_torch_available()`, although with return_tensors=False it reads only metadata (via the `gguf`
    # package) and touches no torch. Patch that one module-level name for the duration of the call.
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    saved = gguf_utils.is_torch_available
    gguf_utils.is_torch_available = lambda: True
    try:
        tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    finally:
        gguf_utils.is_torch_available = saved

    encode, decode = [], []
    for text in TEXTS:
        ids = [int(i) for i in tok.encode(text, add_special_tokens=True)]
        encode.append({"text": text, "ids": ids})
        decode.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False)})

    chat = []
    for messages, gen in CHATS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        ids = _ids(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen))
        chat.append({"messages": messages, "add_generation_prompt": gen, "text": text, "ids": ids})

    special = {}
    for name in ("bos", "eos", "pad", "unk"):
        special[f"{name}_token"] = getattr(tok, f"{name}_token", None)
        special[f"{name}_token_id"] = getattr(tok, f"{name}_token_id", None)
    special["add_bos_token"] = getattr(tok, "add_bos_token", None)
    special["add_eos_token"] = getattr(tok, "add_eos_token", None)
    special["chat_template"] = tok.chat_template

    added = [
        {
            "content": t.content,
            "id": int(i),
            "special": bool(t.special),
            "normalized": bool(t.normalized),
            "lstrip": bool(t.lstrip),
            "rstrip": bool(t.rstrip),
            "single_word": bool(t.single_word),
        }
        for i, t in sorted(tok.added_tokens_decoder.items())
    ]

    # transformers has no entry for tokenizer.ggml.pre == "smollm" in GGUF_PRE_TOKENIZER_SPLITS, so it
    # keeps GPT2Tokenizer's plain ByteLevel(use_regex=True) pre-tokenizer. llama.cpp's "smollm" pre-type
    # (and the original SmolLM2 tokenizer.json) first splits every digit (\p{N}) and then applies the
    # GPT-2 regex, i.e. Digits(individual_digits=True) + ByteLevel. The two differ only when a run of
    # whitespace precedes a digit. Record both, so the Rust side can pick and know which it matches.
    from tokenizers import Tokenizer, pre_tokenizers

    digits_tok = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    digits_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    divergence = {
        "note": "ids_transformers_gguf = tokenizer built by transformers from this GGUF (pre_tokenizer "
        "ByteLevel only); ids_digits_then_bytelevel = Digits(individual_digits)+ByteLevel, which is what "
        "llama.cpp's 'smollm' pre-tokenizer and the original SmolLM2 tokenizer.json do. "
        "add_special_tokens=True (adds nothing for this model).",
        "digits_pre_tokenizer": json.loads(digits_tok.to_str())["pre_tokenizer"],
        "cases": [
            {
                "text": t,
                "ids_transformers_gguf": [int(i) for i in tok.encode(t, add_special_tokens=True)],
                "ids_digits_then_bytelevel": digits_tok.encode(t, add_special_tokens=True).ids,
            }
            for t in DIVERGENCE_TEXTS
        ],
    }

    out = {
        "source_gguf": os.path.basename(gguf_path),
        "versions": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0],
            "torch": torch_note,
        },
        "tokenizer_class": type(tok).__name__,
        "vocab_size": tok.vocab_size,
        "len_tokenizer": len(tok),
        "encode": encode,
        "decode": decode,
        "chat": chat,
        "special": special,
        "added_tokens": added,
        "pretokenizer_divergence": divergence,
    }
    with open(os.path.join(HERE, "smollm2_goldens.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")

    tj = json.loads(tok.backend_tokenizer.to_str())
    with open(os.path.join(HERE, "smollm2_tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
        f.write("\n")

    ok = True
    for e in encode:
        want = EXPECTED.get(e["text"])
        if want is not None and e["ids"] != want:
            ok = False
            print(f"MISMATCH for {e['text']!r}:\n  got  {e['ids']}\n  want {want}", file=sys.stderr)
    print("expected-id checks:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
