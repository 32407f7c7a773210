#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, in about 70 s (an H200, 2026-11-28, before
# the fused torch sync and the offload were added: measured on the next GPU run) and
# 5 minutes at most (every step has a time limit, and all of them share a 285 s budget),
#   1. the CuPy and CUDA-torch tests (tests/test_cupy*.py, tests/test_torch*.py, and
#      tests/test_fused_sync.py: the fused Triton sync's bits on the GPU against the CPU
#      path, slow_device="cpu" in training), which skip with "no CUDA device" elsewhere:
#      here a skip for that reason is a failure;
#   2. the conformance suite on the `cupy` and `torch-cuda` backends;
#   3. the sync bandwidth table (benchmarks/gpu_bench.py): the fused CuPy sync against the
#      device's plain copy and against torch._foreach_lerp_ + _foreach_copy_;
#   4. the PyTorch table (benchmarks/torch_gpu_bench.py): the adapter's fused sync, the
#      foreach pair, timm and pytorch_optimizer on CUDA, bfloat16 with float32 slow weights,
#      and slow_device="cpu" (GPU memory with and without, sync time, pinned bandwidth).
# Usage:  bash benchmarks/gpu_check.sh        Exit status 0 only if all four passed.
# Output is also saved under build/gpu-check/ ($GPU_CHECK_OUT).
#
# Assumptions (docs/cupy.md, "The GPU check", says more):
# - an NVIDIA driver that nvidia-smi can query, and a GPU it lists; without one the script
#   says "no CUDA device" and exits 2 before it sets anything up;
# - Python >= 3.10 as $PYTHON (default python3). If it runs in a virtual environment (as a
#   machine image's python3 with a CUDA build of torch and CuPy does), the project is
#   installed into that environment, editable, like `pip install -e .` by hand; otherwise
#   into a new one, $GPU_CHECK_VENV (default build/gpu-venv), that also sees $PYTHON's own
#   packages. Only what is missing is installed: the `test` extra always, the `cupy` extra
#   when `import cupy` fails (CuPy for another CUDA version is fine) and the `torch` extra
#   when torch is missing. A CUDA build of torch is needed for the torch-cuda checks;
# - the package index is reachable, or wheels of what is missing lie in a folder named by
#   PIP_NO_INDEX=1 PIP_FIND_LINKS=/that/folder (pip reads both variables): typically
#   array-api-compat and array-api-strict, plus setuptools>=77 unless the environment
#   has it (then the editable install is built without an isolated build environment).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-$ROOT/build/gpu-venv}
OUT=${GPU_CHECK_OUT:-$ROOT/build/gpu-check}
START=$SECONDS
# Seconds for the whole script: every command that can take long runs under `within`,
# which gives it its own limit or what is left of the budget, whichever is smaller
# (each limit is several times what the step took on the H200: tests 28 s of 130 (the
# fused kernel's Triton compilations are new since), conformance 4 and 13 s of 20 + 40
# each, the CuPy benchmark 7 s of 45; the PyTorch benchmark is new: 60).
BUDGET=${GPU_CHECK_BUDGET:-285}

say() { printf '\n=== gpu_check [%3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf 'gpu_check: FAILED: %s\n' "$*" >&2; exit 1; }
# within LIMIT COMMAND...: run COMMAND with at most LIMIT seconds (less if the budget is short).
within() {
    local limit=$1 left=$((BUDGET - (SECONDS - START)))
    shift
    ((left < limit)) && limit=$left
    if ((limit < 1)); then
        echo "gpu_check: out of time (the ${BUDGET}s budget is spent) before: $*" >&2
        return 124
    fi
    timeout "$limit" "$@"
}

# --- 1. a GPU, before anything is set up ------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device (nvidia-smi not found: no NVIDIA driver on this machine)" >&2
    exit 2
fi
if ! gpus=$(within 15 nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpus"; then
    echo "gpu_check: no CUDA device (nvidia-smi -L says: ${gpus:-nothing})" >&2
    exit 2
fi
say "GPU"
echo "$gpus"

# --- 2. the environment -----------------------------------------------------------------------
within 20 "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is not Python >= 3.10"
if within 20 "$PYTHON" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    VPY=$PYTHON  # already a virtual environment: install into it
else
    # A new environment that sees the interpreter's packages (no virtual environment is
    # made from inside another one: that would see the base interpreter's packages only,
    # and CUDA's library finder would not look in the parent's site-packages).
    [[ -x $VENV/bin/python ]] || within 30 "$PYTHON" -m venv --system-site-packages "$VENV"
    VPY=$VENV/bin/python
fi
say "environment: $(within 20 "$VPY" -c 'import sys; print(sys.prefix)')"

extras=test
within 30 "$VPY" -c 'import cupy' 2>/dev/null || extras+=,cupy
within 30 "$VPY" -c 'import torch' 2>/dev/null || extras+=,torch
pip_options=(--quiet --disable-pip-version-check)
if within 20 "$VPY" -c \
        'import sys, setuptools; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' \
        2>/dev/null; then
    pip_options+=(--no-build-isolation)  # the environment can build the editable install itself
fi
echo "installing the project with [$extras]"
within 60 "$VPY" -m pip install "${pip_options[@]}" -e "$ROOT[$extras]" \
    || die "pip could not install the project with [$extras] in time (offline? see this script's header)"
within 30 "$VPY" - <<'EOF' || die "the environment cannot use the GPU (see above)"
import sys
import cupy, torch, lookahead_cupy
print(f"python {sys.version.split()[0]}, cupy {cupy.__version__}, torch {torch.__version__}")
reason = lookahead_cupy.skip_reason()
if reason:
    sys.exit(f"CuPy: {reason}: {lookahead_cupy.cuda_status().detail}")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (a CPU-only build?)")
EOF

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0

# --- 3. the tests -----------------------------------------------------------------------------
say "tests: CuPy and CUDA torch"
shopt -s nullglob
tests=("$ROOT"/tests/test_cupy*.py "$ROOT"/tests/test_torch*.py "$ROOT"/tests/test_fused_sync.py)
shopt -u nullglob
parallel=()
if within 20 "$VPY" -c 'import xdist' 2>/dev/null; then parallel=(-n 8); fi
set +e
(cd "$ROOT" && within 130 "$VPY" -m pytest -q -rs -p no:cacheprovider "${parallel[@]}" \
    "${tests[@]}") 2>&1 | tee "$OUT/tests.log"
tests_status=${PIPESTATUS[0]}
set -e
if [[ $tests_status -ne 0 ]]; then
    echo "gpu_check: the tests failed (exit $tests_status; 124 = out of time)" >&2
    status=1
fi
if grep -q "no CUDA device" "$OUT/tests.log"; then
    echo "gpu_check: tests were skipped for want of a CUDA device although nvidia-smi lists one" >&2
    status=1
fi

# --- 4. the conformance suite -----------------------------------------------------------------
for backend in cupy torch-cuda; do
    say "conformance: $backend"
    # A backend that skips (unregistered, or no device) did not run: a failure here.
    if ! (cd "$ROOT" && within 20 "$VPY" - "$backend" <<'EOF'
import sys
from lookahead_conformance import load_backend
try:
    reason = load_backend(sys.argv[1]).skip_reason()
except Exception as exc:  # not registered, or it does not load
    reason = f"{type(exc).__name__}: {exc}"
if reason:
    sys.exit(f"gpu_check: backend {sys.argv[1]} cannot run: {reason}")
EOF
    ); then
        status=1
        continue
    fi
    set +e
    (cd "$ROOT" && within 40 "$VPY" -m lookahead_conformance --backend "$backend" \
        --json "$OUT/conformance-$backend.json") 2>&1 | tee "$OUT/conformance-$backend.txt"
    conformance_status=${PIPESTATUS[0]}
    set -e
    if [[ $conformance_status -ne 0 ]]; then
        echo "gpu_check: conformance of $backend failed" \
             "(exit $conformance_status; 124 = out of time)" >&2
        status=1
    fi
done

# --- 5. the bandwidth table -------------------------------------------------------------------
say "sync bandwidth"
set +e
(cd "$ROOT" && within 45 "$VPY" benchmarks/gpu_bench.py --out "$OUT/bench.md")
bench_status=$?
set -e
if [[ $bench_status -ne 0 ]]; then
    echo "gpu_check: the benchmark failed (exit $bench_status; 124 = out of time)" >&2
    status=1
fi

# --- 6. the PyTorch table ---------------------------------------------------------------------
say "PyTorch sync: fused, foreach, peers, offload"
set +e
(cd "$ROOT" && within 60 "$VPY" benchmarks/torch_gpu_bench.py --out "$OUT/torch-bench.md")
torch_bench_status=$?
set -e
if [[ $torch_bench_status -ne 0 ]]; then
    echo "gpu_check: the PyTorch benchmark failed (exit $torch_bench_status; 124 = out of time)" >&2
    status=1
fi

say "done: $([[ $status -eq 0 ]] && echo PASSED || echo FAILED); logs in $OUT"
exit $status
