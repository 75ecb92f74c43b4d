"""``--optimizer lbfgs`` on the GPU path: the solver's vector arithmetic on device arrays
and sparse rows as device CSR, on the stand-in CuPy of ``test_gpu.py`` (device arrays
are NumPy arrays; the stand-in refuses host operands in sparse products). It checks the
code paths, not CUDA; on a real GPU ``-m gpu`` runs the same solve on CuPy.

    $ python -m pytest -q tests/test_lbfgs_gpu.py
"""
from __future__ import annotations

import numpy as np
import pytest

import sparse_training as st
from test_gpu import GPU_REASON  # noqa: F401
from test_sparse_gpu import fake_gpu, fake_sparse_gpu  # noqa: F401  (the fixtures)
from mpi_dml.devices import gpu_device
from mpi_dml.devices.cpu import CpuDevice
from mpi_dml.parallel.comm import Comm

RUNS = ["logistic_lbfgs", "softmax_owlqn", "linear_lbfgs_warm"]


def gap(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", RUNS)
def test_sparse_rows_on_the_gpu_path_solve_the_dense_problem(fake_sparse_gpu, name):  # noqa: F811
    comm = Comm.world()
    data = st.rows()
    on_gpu = st.fit(comm, name, data=data, device=gpu_device.GpuDevice(comm, np.float64))
    dense = st.fit(comm, name, data=data, dense=True, device=CpuDevice(comm, np.float64))
    assert isinstance(on_gpu.params, np.ndarray)
    assert gap(on_gpu.params, dense.params) <= 1e-9
    assert on_gpu.history[-1]["stop"] in ("gradient", "objective")
    assert on_gpu.history[-1]["objective"] == pytest.approx(dense.history[-1]["objective"],
                                                           rel=1e-12)
    if "owlqn" in name:
        assert (on_gpu.params == 0).sum() > on_gpu.model.size // 4  # L1 zeroes weights


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"needs a CUDA GPU: {GPU_REASON}")
@pytest.mark.parametrize("name", RUNS)
def test_sparse_rows_on_a_real_gpu_solve_the_dense_problem(name):
    comm = Comm.world()
    data = st.rows()
    on_gpu = st.fit(comm, name, data=data, device=gpu_device.GpuDevice(comm, np.float64))
    dense = st.fit(comm, name, data=data, dense=True, device=CpuDevice(comm, np.float64))
    assert gap(on_gpu.params, dense.params) <= 1e-9
