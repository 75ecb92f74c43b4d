"""The Numba CUDA kernels (``kernels.cuda``) against the NumPy reference.

The comparisons live in ``cuda_scripts/compare_kernels.py`` and run in a child
process: the CUDA simulator has to be switched on before Numba is first imported,
and this process has imported it already for the other kernel tests. The child runs
every case once and reports each by name, so a failure here names the kernel, the
variant and the dtype.

* Under the simulator (always): small odd sizes, NumPy arrays, plus a tiny training
  through the real ``Engine`` compared with the same training on the reference.
* On a real GPU (``-m gpu``; skipped without CuPy, a GPU and numba-cuda): the same
  comparisons with CuPy arrays at sizes that use many blocks.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import mpi_env
from cuda_scripts.compare_kernels import case_names
from mpi_dml import kernels

SCRIPT = Path(__file__).parent / "cuda_scripts" / "compare_kernels.py"


def run_script(*args, env=None, timeout=600) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                         text=True, timeout=timeout, env=mpi_env(env))
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(report, case):
    result = report["results"][case]
    assert result["error"] is None, result["error"]


# --- in this process: no kernel launches ---------------------------------------------

def test_cuda_backend_defines_every_name():
    module = kernels.get("cuda")
    assert [name for name in kernels.NAMES if not callable(getattr(module, name, None))] == []


def test_unknown_activation_is_rejected_before_launching():
    module = kernels.get("cuda")
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="relu"):
        module.bias_act_forward(z, np.zeros(3), "sigmoid")
    with pytest.raises(ValueError, match="tanh"):
        module.act_backward(z, z.copy(), "swish", np.zeros(3))


# --- the CUDA simulator ----------------------------------------------------------------

@pytest.fixture(scope="module")
def simulated():
    return run_script(env={"NUMBA_ENABLE_CUDASIM": "1"})


@pytest.mark.parametrize("case", case_names("sim"))
def test_simulated_cuda_matches_reference(simulated, case):
    check(simulated, case)


# --- a real GPU ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def on_gpu():
    from mpi_dml.devices import gpu

    reason = gpu.unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs a CUDA GPU: {reason}")
    report = run_script("--gpu", env={"NUMBA_ENABLE_CUDASIM": "0"})
    if "skipped" in report:
        pytest.skip(report["skipped"])
    return report


@pytest.mark.gpu
@pytest.mark.parametrize("case", case_names("gpu"))
def test_gpu_cuda_matches_reference(on_gpu, case):
    check(on_gpu, case)
