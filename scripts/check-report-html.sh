#!/usr/bin/env bash
# Renders a `tuna compare` report.html in headless Chromium (Debian's package, installed here
# when missing) to report.png beside it, and fails unless the page rendered: Chromium exits 0,
# the PNG exists and is not blank-sized, and the DOM it built holds the report's table and
# both charts.
#   scripts/check-report-html.sh DIR     (DIR holds report.html)
set -euo pipefail
dir="${1:?usage: scripts/check-report-html.sh DIR}"
html="$(cd "$dir" && pwd)/report.html"
[ -f "$html" ] || { echo "error: $html: no such file" >&2; exit 1; }
if ! command -v chromium >/dev/null; then
  echo "installing Debian's chromium" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --user-data-dir="$profile" --hide-scrollbars)
png="$(dirname "$html")/report.png"
rm -f "$png"
chromium "${flags[@]}" --window-size=1200,1800 --screenshot="$png" "file://$html" 2>"$profile/log" \
  || { cat "$profile/log" >&2; echo "error: chromium failed to render $html" >&2; exit 1; }
size=$(stat -c %s "$png" 2>/dev/null || echo 0)
[ "$size" -gt 20000 ] || { echo "error: $png is missing or nearly empty ($size bytes)" >&2; exit 1; }
dom="$(chromium "${flags[@]}" --dump-dom "file://$html" 2>/dev/null)"
for want in "<table>" "The table" "Recommendation" "</svg>"; do
  grep -q "$want" <<<"$dom" || { echo "error: the rendered page lacks $want" >&2; exit 1; }
done
[ "$(grep -o '<svg' <<<"$dom" | wc -l)" -ge 2 ] || { echo "error: the rendered page lacks its charts" >&2; exit 1; }
echo "rendered $html -> $png ($size bytes)"
