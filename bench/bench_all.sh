#!/usr/bin/env bash
# Run the three benchmarks with their defaults; keep the JSON (and the plot) in DIR.
# usage: bench/bench_all.sh [DIR]      (default: bench-results-<UTC timestamp>)
set -euo pipefail
dir=${1:-bench-results-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
uptime | tee "$dir/load-before.txt"
devmemtcp bench frags --json > "$dir/frags.json"
devmemtcp bench stream --json > "$dir/stream.json"
devmemtcp bench report --out "$dir/report"
uptime | tee "$dir/load-after.txt"
echo "results in $dir"
