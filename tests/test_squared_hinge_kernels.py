"""The squared hinge loss kernels (LIBLINEAR's L2-loss SVM): reference, cpu (serial and
threaded) and cuda (under the simulator, or on a GPU with ``-m gpu``). No MPI.

    $ .venv/bin/python -m pytest -q tests/test_squared_hinge_kernels.py
    $ .venv/bin/python -m pytest -q -m gpu tests/test_squared_hinge_kernels.py   # on a GPU

Truths used: a NumPy replay of the formula in float64, hand-computed values, central
differences, and the reference kernel for the other backends.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import mpi_env
from cuda_scripts.compare_squared_hinge import case_names
from mpi_dml import kernels

REF, CPU = kernels.get("reference"), kernels.get("cpu")
NAME = "squared_hinge_loss_grad"
DTYPES = (np.float32, np.float64)
SCRIPT = Path(__file__).parent / "cuda_scripts" / "compare_squared_hinge.py"


def rng_for(*params):
    return np.random.default_rng(zlib.crc32(repr(params).encode()))


def replay(z, y):
    """(loss sum, correct, dLoss/dz) from the formula, in float64: t = 2y - 1,
    loss max(0, 1 - t z)^2, gradient -2 t max(0, 1 - t z)."""
    z, t = z[:, 0].astype(np.float64), 2 * y.astype(np.float64) - 1
    slack = np.maximum(0, 1 - t * z)
    return float(np.sum(slack**2)), int(np.sum((z > 0) == (t > 0))), -2 * t * slack


def problem(n, dtype, seed=0):
    """Random outputs with a share of rows exactly on the margin (t z == 1)."""
    rng = rng_for(n, np.dtype(dtype).name, seed)
    z = (2 * rng.standard_normal((n, 1))).astype(dtype)
    y = rng.integers(0, 2, size=n).astype(dtype)
    on_margin = rng.random(n) < 0.2
    z[on_margin, 0] = 2 * y[on_margin] - 1
    return z, y


# --- kernels ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 64, 5000])
def test_kernel_matches_the_formula(backend, dtype, n):
    z, y = problem(n, dtype)
    loss_want, correct_want, grad_want = replay(z, y)
    bias_grad = np.full(1, 7.0, dtype)  # junk: must be overwritten
    loss, correct = getattr(kernels.get(backend), NAME)(z, y, bias_grad)
    assert isinstance(loss, float) and isinstance(correct, int)
    assert correct == correct_want
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, loss_want, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(z[:, 0], grad_want, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(bias_grad, [grad_want.sum()], rtol=rtol, atol=rtol * (n + 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_gradient_is_the_reference_to_the_bit(dtype):
    """-2 t slack is exact for t = +-1, so the backends may not differ by any rounding."""
    z_ref, y = problem(999, dtype, seed=1)
    z_cpu = z_ref.copy()
    REF.squared_hinge_loss_grad(z_ref, y, np.empty(1, dtype))
    CPU.squared_hinge_loss_grad(z_cpu, y, np.empty(1, dtype))
    assert z_cpu.tobytes() == z_ref.tobytes()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_known_values_on_inside_and_past_the_margin(backend):
    z = np.array([[1.0], [-1.0], [0.5], [-0.25], [2.0], [-3.0], [0.0]])
    bias_grad = np.empty(1)
    loss, correct = getattr(kernels.get(backend), NAME)(
        z, np.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]), bias_grad)
    assert loss == 0.5**2 + 0.75**2 + 3**2 + 1**2
    assert correct == 5
    np.testing.assert_array_equal(z[:, 0], [0.0, 0.0, -1.0, 1.5, 6.0, 0.0, -2.0])
    assert bias_grad[0] == 4.5


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_nan_outputs_reach_the_loss_and_empty_batches_give_zero(backend):
    """A NaN must show in the loss, where the step's non-finite check looks."""
    k = getattr(kernels.get(backend), NAME)
    z = np.array([[np.nan], [0.5]])
    loss, _ = k(z, np.array([1.0, 1.0]), np.empty(1))
    assert np.isnan(loss) and np.isnan(z[0, 0]) and z[1, 0] == -1.0
    bias_grad = np.full(1, 7.0)
    assert k(np.empty((0, 1)), np.empty(0), bias_grad) == (0.0, 0)
    assert bias_grad[0] == 0


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_sums_can_stay_in_totals(backend):
    z, y = problem(9, np.float64, seed=2)
    k = getattr(kernels.get(backend), NAME)
    z_kept = z.copy()
    loss, correct = k(z, y, np.empty(1))
    totals = np.full(3, -1.0)
    assert k(z_kept, y, np.empty(1), totals) is None
    np.testing.assert_array_equal(totals, [loss, correct, 9])
    np.testing.assert_array_equal(z_kept, z)


def test_gradient_matches_central_differences():
    z, y = problem(8, np.float64, seed=3)
    z += 0.01  # off the margin, where the second derivative jumps

    def loss_of(values):
        return REF.squared_hinge_loss_grad(values.copy(), y, np.empty(1))[0]

    numeric = np.empty(len(z))
    for i in range(len(z)):
        up, down = z.copy(), z.copy()
        up[i, 0] += 1e-6
        down[i, 0] -= 1e-6
        numeric[i] = (loss_of(up) - loss_of(down)) / 2e-6
    grad = z.copy()
    REF.squared_hinge_loss_grad(grad, y, np.empty(1))
    np.testing.assert_allclose(grad[:, 0], numeric, rtol=1e-6, atol=1e-8)


def test_threaded_cpu_kernel_gives_the_serial_bits():
    """Row chunks are summed in a fixed order: any thread count gives the same bits."""
    import numba

    z, y = problem(5000, np.float32, seed=4)
    outputs = []
    saved = numba.get_num_threads()
    try:
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            numba.set_num_threads(threads)
            for kernel in (CPU._squared_hinge_loss_grad, CPU._squared_hinge_loss_grad_threaded):
                zz, bias_grad = z.copy(), np.empty(1, np.float32)
                sums = kernel(zz, y, bias_grad, np.float32(1))
                outputs.append((zz.tobytes(), bias_grad.tobytes(), sums))
    finally:
        numba.set_num_threads(saved)
    assert len(outputs) >= 2 and all(out == outputs[0] for out in outputs)
    loss, correct, _ = replay(z, y)
    assert outputs[0][2][1] == correct
    assert outputs[0][2][0] == pytest.approx(loss, rel=1e-5)


# --- the CUDA kernel -------------------------------------------------------------------

def run_script(*args, env=None) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                         text=True, timeout=300, env=mpi_env(env))
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def simulated():
    return run_script(env={"NUMBA_ENABLE_CUDASIM": "1"})


@pytest.mark.parametrize("case", case_names("sim"))
def test_simulated_cuda_matches_reference(simulated, case):
    assert simulated["results"][case]["error"] is None, simulated["results"][case]["error"]


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
    assert on_gpu["results"][case]["error"] is None, on_gpu["results"][case]["error"]
