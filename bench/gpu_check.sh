#!/usr/bin/env bash
# The GPU checks of devmemtcp's CUDA memory, in one run, for a machine with an NVIDIA GPU:
#   1. install the package with its [cuda,dev] extras and CuPy (with NVRTC, for the kernels);
#   2. show the driver and doctor's CUDA checks;
#   3. pytest -m gpu (export and bind, device gather == host gather, device validation,
#      nothing left behind by cuMemGetInfo, the 1 GiB demo with --memory cuda on both ends);
#   4. devmemtcp bench gather --memory cuda (targets: 0.8 of cuMemcpyDtoD for page-aligned
#      frags, 0.5 for 1448-byte frags).
# Every step's output goes to DIR (default gpu-check-<UTC timestamp>) and to the terminal.
# usage: bench/gpu_check.sh [DIR]
# Offline machines: put the wheels in $WHEELS (pip install --no-index --find-links "$WHEELS").
# Exit status: 0 when the tests passed and the bench met its targets, else the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=${1:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
py=${PYTHON:-python3}
status=0

step() { echo; echo "== $*"; }

step "install" | tee "$dir/install.txt"
pip_args=()
[ -n "${WHEELS:-}" ] && pip_args=(--no-index --find-links "$WHEELS")
{
  "$py" -m pip install -q "${pip_args[@]}" -e '.[cuda,dev]' \
    && "$py" -m pip install -q "${pip_args[@]}" 'cupy-cuda12x[ctk]'
} 2>&1 | tee -a "$dir/install.txt" || echo "install incomplete: tests needing CuPy will be skipped" \
  | tee -a "$dir/install.txt"
"$py" -c 'import cuda.bindings.driver, numpy; print("cuda-python", cuda.bindings.driver.__name__)' 2>&1 \
  | tee -a "$dir/install.txt"
"$py" -c 'import cupy; print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())' 2>&1 \
  | tee -a "$dir/install.txt"

step "driver" | tee "$dir/driver.txt"
{ nvidia-smi || true; cat /proc/driver/nvidia/version 2>&1 || true; } | tee -a "$dir/driver.txt"
"$py" -m devmemtcp.cli.main doctor lo --json > "$dir/doctor.json" 2>&1
"$py" - "$dir/doctor.json" <<'EOF' | tee -a "$dir/driver.txt"
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if c["name"] in ("cuda-driver", "cuda-dmabuf", "kernel-dmabuf", "iommu", "udmabuf"):
        print(f'{c["name"]:14} {c["status"]:8} {c["detail"]}' + (f'  [fix: {c["fix"]}]' if c["fix"] else ""))
EOF

step "pytest -m gpu" | tee "$dir/pytest.txt"
timeout 900 "$py" -m pytest -m gpu -v -rs -p no:cacheprovider tests 2>&1 | tee -a "$dir/pytest.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc

step "bench gather --memory cuda" | tee "$dir/bench.txt"
timeout 600 "$py" -m devmemtcp.cli.main bench gather --memory cuda --check 2>&1 | tee -a "$dir/bench.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
timeout 600 "$py" -m devmemtcp.cli.main bench gather --memory cuda --json --quiet > "$dir/bench.json" 2>&1

echo
echo "results in $dir (exit status $status)"
exit "$status"
