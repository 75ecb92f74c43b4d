"""Sparse rows on the GPU path: CuPy's CSR batches, cuSPARSE products (``x @ w``,
``x.T @ d``) and the compact exchange and update, on the stand-in CuPy of
``test_gpu.py`` (device arrays are NumPy arrays; the stand-in ``cupyx.scipy.sparse``
multiplies with SciPy and insists on device operands). This checks the code paths, not
CUDA; on a real GPU ``-m gpu`` runs the same training on CuPy.

    $ python -m pytest -q tests/test_sparse_gpu.py
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.sparse

import sparse_training as st
from test_gpu import GPU_REASON, FakeArray, fake_gpu  # noqa: F401  (the fixture)
from mpi_dml.devices import gpu_device
from mpi_dml.devices.cpu import CpuDevice
from mpi_dml.parallel.comm import Comm

TOL = 1e-6


def _on_device(a):
    assert isinstance(a, FakeArray), f"a host array ({type(a).__name__}) reached the GPU product"
    return np.asarray(a)


class FakeCsr:
    """The parts of ``cupyx.scipy.sparse.csr_matrix`` mpi_dml uses."""

    def __init__(self, arg, shape=None):
        self.data, self.indices, self.indptr = (np.asarray(a).view(FakeArray) for a in arg)
        self.shape = tuple(shape)
        self._host = scipy.sparse.csr_matrix(
            (_on_device(self.data), _on_device(self.indices), _on_device(self.indptr)),
            shape=self.shape)

    def tocsr(self):
        return self

    def __matmul__(self, w):
        return np.asarray(self._host @ _on_device(w)).view(FakeArray)

    @property
    def T(self):  # noqa: N802  (SciPy's and CuPy's name)
        return _Transposed(self._host.T)


class _Transposed:
    def __init__(self, host):
        self._host = host

    def __matmul__(self, d):
        return np.asarray(self._host @ _on_device(d)).view(FakeArray)


@pytest.fixture
def fake_sparse_gpu(fake_gpu, monkeypatch):  # noqa: F811
    sparse = types.ModuleType("cupyx.scipy.sparse")
    sparse.csr_matrix = FakeCsr
    package = types.ModuleType("cupyx")
    package.scipy = types.ModuleType("cupyx.scipy")
    package.scipy.sparse = sparse
    for name, module in (("cupyx", package), ("cupyx.scipy", package.scipy),
                         ("cupyx.scipy.sparse", sparse)):
        monkeypatch.setitem(sys.modules, name, module)
    return fake_gpu


@pytest.mark.parametrize("name", ["sgd_decay_l1", "softmax_momentum", "mlp_adamw"])
def test_sparse_rows_on_the_gpu_path_train_the_dense_model(fake_sparse_gpu, name):
    comm = Comm.world()
    data = st.rows()
    sizes = []
    dev = gpu_device.GpuDevice(comm, np.float64)
    on_gpu = st.fit(comm, name, data=data, sizes=sizes, device=dev)
    dense = st.fit(comm, name, data=data, dense=True, device=CpuDevice(comm, np.float64))
    assert max(sizes) < on_gpu.model.size / 2  # compact rounds, on the device
    assert isinstance(on_gpu.params, np.ndarray) and not isinstance(on_gpu.params, FakeArray)
    gap = np.max(np.abs(on_gpu.params - dense.params)) / max(1, np.max(np.abs(dense.params)))
    assert gap <= TOL
    assert on_gpu.final == pytest.approx(dense.final, rel=1e-9)  # validation on the device


def test_batches_cross_as_csr(fake_sparse_gpu):
    comm = Comm.world()
    dev = gpu_device.GpuDevice(comm, np.float64)
    x = st.rows(n=30, n_features=500)[0]
    y = np.arange(30.0)
    placed = dev.place_rows(x, y, "yes")
    assert placed[0] is x  # sparse rows stay on the host; batches cross

    class Plan:
        def local_indices(self, step):
            return np.array([[3, 1, 4], [29, 0, 7]][step])
    for step, (xb, yb) in enumerate(dev.batches(x, y, Plan(), 0, 2)):
        want = x[Plan().local_indices(step)]
        assert isinstance(xb, FakeCsr) and isinstance(yb, FakeArray)
        np.testing.assert_array_equal(np.asarray(xb.indices), want.indices)
        np.testing.assert_array_equal(np.asarray(xb.data), want.data)
        assert xb.shape == (3, 500)
    dev.close()


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"needs a CUDA GPU: {GPU_REASON}")
def test_sparse_rows_on_a_real_gpu_train_the_dense_model():
    comm = Comm.world()
    dev = gpu_device.GpuDevice(comm, np.float64)
    data = st.rows()
    on_gpu = st.fit(comm, "logistic_adam", data=data, device=dev)
    dense = st.fit(comm, "logistic_adam", data=data, dense=True,
                   device=CpuDevice(comm, np.float64))
    assert np.max(np.abs(on_gpu.params - dense.params)) <= TOL
