#!/usr/bin/env bash
# Bounded coverage-guided fuzz run of the decoders (tests/fuzz/fuzz_codec.py):
# RX/TX cmsgs, MSG_ZEROCOPY completions, netlink attributes, the DONTNEED planner.
# Usage: tools/fuzz.sh [SECONDS]   (default 60; FUZZ_TIME works too)
# Exit 1 if any input made a decoder raise a foreign exception or accept garbage;
# the input is kept as fuzz-crash-* in the current directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
total="${1:-${FUZZ_TIME:-60}}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
py="${PYTHON:-python3}"
harness="$root/tests/fuzz/fuzz_codec.py"

"$py" "$harness" --make-seeds "$work/corpus" 2>/dev/null
set +e
FUZZ_STATS="$work/stats.json" "$py" "$harness" "$work/corpus" -max_total_time="$total" \
  -rss_limit_mb=2048 -timeout=20 -artifact_prefix="$PWD/fuzz-" >"$work/log" 2>&1
rc=$?
set -e
if [ "$rc" != 0 ]; then
  tail -40 "$work/log"
  echo "fuzz: FAILED (exit $rc): a decoder raised a foreign exception or accepted garbage; input saved as $PWD/fuzz-*"
  exit 1
fi
runs="$(grep -o 'Done [0-9]* runs' "$work/log" | awk '{print $2}' || true)"
"$py" - "$work/stats.json" "${runs:-}" "$total" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
runs = int(sys.argv[2]) if sys.argv[2] else st["tried"]
per = ", ".join(f"{k} {v['tried']} ({v['accepted']} accepted, {v['refused']} refused)"
                for k, v in st["targets"].items())
print(f"fuzz: {runs} inputs in {sys.argv[3]} s, all handled cleanly; by decoder (sampled): {per}")
PY
