#!/usr/bin/env bash
# The GPU checks of devmemtcp's CUDA memory, in one run, for a machine with an NVIDIA GPU:
#   1. the environment: cuda-python (cuda.bindings), CuPy, the package from src/;
#   2. the driver and doctor's CUDA checks;
#   3. pytest -m gpu (export and bind, device gather == host gather, device validation,
#      nothing left behind by cuMemGetInfo, the 1 GiB demo with --memory cuda on both ends);
#   4. devmemtcp bench gather --memory cuda (targets: 0.8 of cuMemcpyDtoD for page-aligned
#      frags, 0.5 for 1448-byte frags).
# Every step's output goes to DIR (default $OUT if set, else gpu-check-<UTC timestamp>).
#
# usage: bench/gpu_check.sh [DIR]
#        bench/gpu_check.sh --prepare    (on a machine with PyPI: download into .whl/ the pure-Python
#                                         wheels an offline GPU image may lack, for Python 3.12)
# Offline GPU machine: carry .whl/; the script installs it with --no-index into /tmp/site.
# Online machine without the packages: set GPU_CHECK_PIP=1 to pip install '.[gpu,dev]'
# (cuda-python and cupy-cuda12x with NVRTC).
# Exit status: 0 when the tests passed and the bench met its targets, else the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .whl
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
  exec "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .whl pyroute2
fi

dir=${1:-${OUT:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}}
mkdir -p "$dir"
status=0
step() { echo; echo "== $*"; }

step "environment" | tee "$dir/env.txt"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl 2>&1 | tee -a "$dir/env.txt"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "${GPU_CHECK_PIP:-0}" = 1 ]; then
  "$py" -m pip install -q -e '.[gpu,dev]' 2>&1 | tee -a "$dir/env.txt"
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$py" - <<'EOF' 2>&1 | tee -a "$dir/env.txt"
import importlib, sys
print("python", sys.version.split()[0])
for name in ("devmemtcp", "numpy", "pyroute2", "rich", "psutil", "pytest", "hypothesis",
             "cuda.bindings.driver", "cupy"):
    try:
        m = importlib.import_module(name)
        print(f"{name:22} {getattr(m, '__version__', '')} {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"{name:22} MISSING: {type(exc).__name__}: {exc}")
EOF

step "driver" | tee "$dir/driver.txt"
{ nvidia-smi || true; cat /proc/driver/nvidia/version 2>&1 || true; } | tee -a "$dir/driver.txt"
"$py" -m devmemtcp.cli.main doctor lo --json > "$dir/doctor.json" 2>>"$dir/driver.txt"
"$py" - "$dir/doctor.json" <<'EOF' 2>&1 | tee -a "$dir/driver.txt"
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if c["name"] in ("cuda-driver", "cuda-dmabuf", "kernel-dmabuf", "iommu", "udmabuf"):
        print(f'{c["name"]:14} {c["status"]:8} {c["detail"]}' + (f'  [fix: {c["fix"]}]' if c["fix"] else ""))
EOF

step "pytest -m gpu" | tee "$dir/pytest.txt"
timeout 400 "$py" -m pytest -m gpu -v -rs -p no:cacheprovider tests 2>&1 | tee -a "$dir/pytest.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc

step "bench gather --memory cuda" | tee "$dir/bench.txt"
timeout 150 "$py" -m devmemtcp.cli.main bench gather --memory cuda --json > "$dir/bench.json" \
  2>>"$dir/bench.txt"
rc=$?
cat "$dir/bench.txt"
[ "$rc" -eq 0 ] && "$py" - "$dir/bench.json" <<'EOF' 2>&1 | tee -a "$dir/bench.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(r["device"], "driver CUDA", r.get("driver"))
for c in r["cases"]:
    print(f'{c["frags"]} x {c["frag_size"]} B: gather {c["gather_gbps"]:.1f} GB/s, copy {c["copy_gbps"]:.1f} '
          f'GB/s, ratio {c["ratio"]:.2f} ({c["ratio_with_upload"]:.2f} with the frag list upload of '
          f'{c["upload_us"]:.1f} us), plan {c["plan_ms"]:.2f} ms, {c["frag_list"]}')
for name, t in r["targets"].items():
    print(f'{name}: {t["value"]:.3f} {t["target"]} met={t["met"]}')
sys.exit(0 if all(t["met"] for t in r["targets"].values()) else 1)
EOF
[ "$rc" -eq 0 ] && rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc

echo
echo "results in $dir (exit status $status)"
exit "$status"
