"""The CPU device: NumPy arrays, the Numba kernels, MPI Allreduce on host memory."""
from __future__ import annotations

import numpy as np


class CpuDevice:
    """NumPy arrays, Numba kernels, MPI Allreduce on host memory."""

    kind = "cpu"
    xp = np

    def __init__(self, comm, dtype, kernels=None):
        self.comm = comm
        self.kernels = kernels or _cpu_kernels(dtype)

    def setup_step(self, what: str, fn, *args, **kwargs):
        """One step of setting up training; on the CPU nothing in it needs agreeing."""
        return fn(*args, **kwargs)

    def zeros(self, n, dtype):
        return np.zeros(n, dtype=dtype)

    def from_host(self, array):
        if hasattr(array, "indptr"):  # CSR rows stay as they are: never made dense
            return array
        return np.ascontiguousarray(array)

    def to_host(self, array) -> np.ndarray:
        return array

    def place_rows(self, x, y, mode):
        """The rows batches are gathered from: on the CPU, where they are."""
        return x, y

    def batches(self, x, y, plan, start, stop):
        """(x, y) rows of this rank for steps ``start`` to ``stop - 1`` of ``plan``."""
        for step in range(start, stop):
            idx = plan.local_indices(step)
            yield x[idx], y[idx]

    def exchange_as_ready(self, buf):
        """None: the exchange waits for the whole buffer. An Iallreduce per finished layer
        was measured no faster at 2 ranks (MPI progresses it only inside MPI calls)."""
        return None

    def allreduce_(self, buf):
        return self.comm.allreduce_(buf)

    def synchronize(self):
        pass

    def describe(self) -> dict:
        return {"device": "cpu", "exchange": "mpi"}

    def close(self):
        pass


def _cpu_kernels(dtype):
    from ..kernels import get, warm_up

    warm_up("cpu", np.dtype(dtype))  # compile before the clock starts
    return get("cpu")

