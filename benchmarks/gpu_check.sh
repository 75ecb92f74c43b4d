#!/usr/bin/env bash
# The GPU path checked on a GPU node in one go, in under 10 minutes: install, probe,
# the GPU tests, the GPU training benchmark against PyTorch. Results go to $OUT.
#
#   $ bash benchmarks/gpu_check.sh                 # in the repository root, on a GPU node
#   $ OUT=gpu-results bash benchmarks/gpu_check.sh
#   $ bash benchmarks/gpu_check.sh --dry-run       # install and probe only; no GPU needed
#
# 1. install: a virtual environment ($VENV) that sees $PYTHON's packages (CuPy,
#    numba-cuda, NCCL, PyTorch come from there), the wheels in $WHEELS (e.g. mpich and
#    mpi4py, for a node without an MPI) on top, and this repository, editable. Nothing
#    is downloaded: on a node without a network, carry the wheels.
# 2. probe: versions of Python, NumPy, Numba, numba-cuda, CuPy, PyTorch, mpi4py, the MPI
#    library and NCCL, nvidia-smi, and `python -m mpi_dml info` (the GPU each rank would
#    use and the gradient exchange, with why).
# 3. pytest -m gpu: every test that needs a GPU.
# 4. benchmark: benchmarks/bench_train.py --device gpu ($BENCH_ARGS), mpi_dml against
#    PyTorch on the same GPU, with the time split per step.
#
# Steps 3 and 4 need a GPU: without one (or with --dry-run) they are skipped, and
# summary.txt says why. What comes back, in $OUT: summary.txt (one line a step: PASS,
# FAIL or SKIP and why), install.log, probe.json, probe.log, pytest_gpu.log,
# bench_gpu.log and bench_gpu.json. The exit status is 1 if a step failed, else 0.
#
# Settings (environment): OUT (default ./gpu_check_out), PYTHON (default python3),
# WHEELS (default .whl), VENV (default /tmp/mpi_dml_gpu_check), BENCH_ARGS (default
# "--repeats 3"), TEST_TIMEOUT and BENCH_TIMEOUT (seconds; default 240 and 300).
set -uo pipefail

dry_run=0
case "${1:-}" in
    --dry-run) dry_run=1 ;;
    "") ;;
    *) echo "gpu_check.sh: unknown argument '$1'; the only one is --dry-run" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-gpu_check_out}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
VENV=${VENV:-/tmp/mpi_dml_gpu_check}
BENCH_ARGS=${BENCH_ARGS:---repeats 3}
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
summary="$OUT/summary.txt"
: >"$summary"
failed=0

say() {  # step, PASS|FAIL|SKIP, why
    echo "$1: $2${3:+ ($3)}" | tee -a "$summary"
    [[ $2 == FAIL ]] && failed=1
    return 0
}

# --- 1. install ---------------------------------------------------------------------------
install() {
    "$PYTHON" -m venv --clear --without-pip "$VENV" || return 1
    local site base
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))') || return 1
    base=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("purelib"))') || return 1
    # The new environment sees the base's packages after its own, so the wheels
    # installed here win and pip itself comes from the base. addsitedir, not a plain
    # path: the base's own .pth files (CUDA library paths, editable installs) count too.
    echo "import site; site.addsitedir('$base')" >"$site/_base_packages.pth"
    local wheels=("$WHEELS"/*.whl)
    if [[ -e ${wheels[0]} ]]; then
        # --ignore-installed: into $VENV, never over (or out of) the base's packages.
        "$VENV/bin/python" -m pip install --no-index --no-deps --no-compile --ignore-installed \
            "${wheels[@]}" || return 1
    else
        echo "no wheels in $WHEELS: MPI and mpi4py come from $PYTHON's packages"
    fi
    if "$VENV/bin/python" -c 'import mpi_dml, os, sys
sys.exit(os.path.dirname(os.path.dirname(os.path.abspath(mpi_dml.__file__))) != sys.argv[1])' \
            "$PWD" 2>/dev/null; then
        echo "mpi_dml is installed from $PWD in $PYTHON already"
    else
        "$VENV/bin/python" -m pip install --no-index --no-deps --no-build-isolation \
            --ignore-installed -e . || return 1
    fi
    "$VENV/bin/python" -c 'import mpi_dml, mpi_dml.kernels' || return 1
}
if install >"$OUT/install.log" 2>&1; then
    if [[ -e $(compgen -G "$WHEELS/*.whl" | head -n 1) ]]; then
        say install PASS "$VENV with $(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ' | sed 's/ $//')"
    else
        say install PASS "$VENV; no wheels in $WHEELS, so MPI and mpi4py come from $PYTHON"
    fi
else
    say install FAIL "see install.log"
    exit 1
fi
py="$VENV/bin/python"
# An MPI from wheels lives in $VENV; one from the base environment in its prefix.
base_prefix=$("$PYTHON" -c 'import sys; print(sys.prefix)')
export PATH="$VENV/bin:$base_prefix/bin:$PATH"
export LD_LIBRARY_PATH="$VENV/lib:$base_prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# --- 2. probe -----------------------------------------------------------------------------
# shellcheck disable=SC2016
probe_py='
import importlib.metadata as md, json, platform, sys
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
facts = {"python": platform.python_version(), "executable": sys.executable}
for name in ("numpy", "numba", "numba-cuda", "cupy-cuda12x", "cupy-cuda13x", "torch",
             "mpi4py", "mpich", "nvidia-nccl-cu12", "nvidia-nccl-cu13", "mpi_dml"):
    facts[name] = version(name)
from mpi_dml.devices import gpu
facts["gpu_unavailable"] = gpu.unavailable_reason()
if facts["gpu_unavailable"] is None:
    cupy = gpu.import_cupy()
    facts["gpu"] = gpu.gpu_name(cupy, 0)
    facts["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    facts["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    facts["nccl"] = gpu._nccl_status()[1]
    from numba import cuda
    facts["numba_cuda_available"] = cuda.is_available()
try:
    import torch
    facts["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
except ImportError:
    facts["torch_cuda"] = None
from mpi_dml.parallel.comm import mpi_library_version
facts["mpi_library"] = mpi_library_version().strip().splitlines()[0]
print(json.dumps(facts, indent=1))
'
(
    echo "== versions and the GPU context"
    "$py" -c "$probe_py" >"$OUT/probe.json"
    status=$?
    cat "$OUT/probe.json"
    echo "== nvidia-smi"
    nvidia-smi 2>&1 || echo "nvidia-smi is not there"
    echo "== python -m mpi_dml info (2 ranks)"
    if command -v mpiexec >/dev/null; then
        timeout 120 mpiexec -n 2 "$py" -m mpi_dml info 2>&1
    else
        echo "no mpiexec: carry the mpich wheel in $WHEELS"
    fi
    exit $status
) >"$OUT/probe.log" 2>&1
if [[ $? -ne 0 ]]; then
    say probe FAIL "see probe.log"
    exit 1
fi
no_gpu=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["gpu_unavailable"] or "")' "$OUT/probe.json")
if [[ -n $no_gpu ]]; then
    say probe PASS "no usable GPU here: $no_gpu"
else
    say probe PASS "$("$py" -c 'import json, sys; f = json.load(open(sys.argv[1])); print(f["gpu"], "CuPy", f.get("cupy-cuda13x") or f.get("cupy-cuda12x"), f["nccl"])' "$OUT/probe.json")"
fi

# --- 3 and 4: on the GPU ------------------------------------------------------------------
why_skip=""
if (( dry_run )); then
    why_skip="dry run: install and probe only"
elif [[ -n $no_gpu ]]; then
    why_skip="needs a GPU: $no_gpu"
fi
if [[ -n $why_skip ]]; then
    say "pytest -m gpu" SKIP "$why_skip"
    say benchmark SKIP "$why_skip"
    exit $failed
fi

timeout "$TEST_TIMEOUT" "$py" -m pytest -q -m gpu -p no:cacheprovider >"$OUT/pytest_gpu.log" 2>&1
status=$?
line=$(tail -n 1 "$OUT/pytest_gpu.log")
if [[ $status -eq 0 ]]; then
    say "pytest -m gpu" PASS "$line"
elif [[ $status -eq 124 ]]; then
    say "pytest -m gpu" FAIL "stopped after ${TEST_TIMEOUT}s; see pytest_gpu.log"
else
    say "pytest -m gpu" FAIL "$line"
fi

# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
timeout "$BENCH_TIMEOUT" "$py" benchmarks/bench_train.py --device gpu $BENCH_ARGS \
    --json "$OUT/bench_gpu.json" >"$OUT/bench_gpu.log" 2>&1
status=$?
if [[ $status -eq 0 ]]; then
    say benchmark PASS "$(grep -E 'PASS|MISS' "$OUT/bench_gpu.log" | tr '\n' ';' | sed 's/;$//')"
elif [[ $status -eq 124 ]]; then
    say benchmark FAIL "stopped after ${BENCH_TIMEOUT}s; see bench_gpu.log"
else
    say benchmark FAIL "see bench_gpu.log"
fi
exit $failed
