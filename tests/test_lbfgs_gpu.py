"""``--optimizer lbfgs`` on the GPU path (and on the CPU's sparse rows): the solver's vector arithmetic on device arrays
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
    # And on the CPU's sparse rows, where a warm start's SGD is lazy (caught up before
    # L-BFGS reads the weights).
    on_cpu = st.fit(comm, name, data=data, device=CpuDevice(comm, np.float64))
    assert isinstance(on_gpu.params, np.ndarray)
    assert gap(on_gpu.params, dense.params) <= 1e-9
    assert gap(on_cpu.params, dense.params) <= 1e-9
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


@pytest.mark.parametrize("name", ["logistic_lbfgs", "softmax_owlqn"])
def test_host_rows_cross_to_the_gpu_a_chunk_at_a_time(fake_sparse_gpu, monkeypatch,  # noqa: F811
                                                      name):
    """Rows left on the host (sparse ones always; dense ones that do not fit) are never
    copied to the device whole: each evaluation moves them a chunk at a time."""
    from mpi_dml.algorithms import lbfgs

    monkeypatch.setattr(lbfgs, "PASS_VALUES", 1000)
    monkeypatch.setattr(lbfgs, "MIN_CHUNK", 50)
    moved = []
    plain = gpu_device.GpuDevice.from_host

    def from_host(self, array):
        if hasattr(array, "indptr"):
            moved.append(array.shape[0])
        return plain(self, array)

    monkeypatch.setattr(gpu_device.GpuDevice, "from_host", from_host)
    comm = Comm.world()
    data = st.rows()
    on_gpu = st.fit(comm, name, data=data, device=gpu_device.GpuDevice(comm, np.float64))
    dense = st.fit(comm, name, data=data, dense=True, device=CpuDevice(comm, np.float64))
    # Chunks of 1000 values of input: rows hold 6 to 10 nonzeros (one more counted).
    assert moved and max(moved) <= 1000 // 7 < st.N_ROWS
    assert gap(on_gpu.params, dense.params) <= 1e-9
