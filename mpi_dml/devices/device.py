"""Where training computes: the array module, the kernels and the gradient exchange.

The trainer talks to one ``Device`` and never asks which kind it is. On the CPU the
arrays are NumPy arrays, the kernels are the Numba ones and the exchange is the MPI
Allreduce of ``Comm``. The GPU device (``gpu.GpuDevice``) has the same methods over
CuPy arrays.

    >>> dev = select_device("cpu", comm, np.float32)
    >>> grads = dev.zeros(model.size, np.float32)
    >>> for xb, yb in dev.batches(x, y, plan, 0, steps): ...
    >>> dev.allreduce_(grads)
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError

DEVICES = ("cpu", "gpu", "auto")


class CpuDevice:
    """NumPy arrays, Numba kernels, MPI Allreduce on host memory."""

    kind = "cpu"
    xp = np

    def __init__(self, comm, dtype, kernels=None):
        self.comm = comm
        self.kernels = kernels or _cpu_kernels(dtype)

    def zeros(self, n, dtype):
        return np.zeros(n, dtype=dtype)

    def from_host(self, array):
        return np.ascontiguousarray(array)

    def to_host(self, array) -> np.ndarray:
        return array

    def batches(self, x, y, plan, start, stop):
        """(x, y) rows of this rank for steps ``start`` to ``stop - 1`` of ``plan``."""
        for step in range(start, stop):
            idx = plan.local_indices(step)
            yield x[idx], y[idx]

    def allreduce_(self, buf):
        return self.comm.allreduce_(buf)

    def synchronize(self):
        pass

    def describe(self) -> dict:
        return {"device": "cpu", "exchange": "mpi"}

    def close(self):
        pass


def select_device(requested: str, comm, dtype, *, kernels=None, exchange: str = "auto"):
    """The device for ``--device``: cpu, gpu, or auto (the GPU when CuPy sees one).

    Collective: every rank gets the same kind. A GPU missing on one rank fails the job
    on all of them with one message (``gpu``) or puts every rank on the CPU (``auto``).
    """
    if requested not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}; got {requested!r}")
    if requested == "cpu":
        return CpuDevice(comm, dtype, kernels)
    from . import gpu

    reason = gpu.unavailable_reason()  # local: imports CuPy, counts GPUs, no collectives
    everywhere = comm.allreduce_int(reason is None, op="min")
    if requested == "auto" and not everywhere:
        return CpuDevice(comm, dtype, kernels)
    comm.agree(None if reason is None else f"--device gpu: {reason}")
    return gpu.GpuDevice(comm, dtype, exchange=exchange)  # collective: binds, probes


def _cpu_kernels(dtype):
    from ..kernels import get, warm_up

    warm_up("cpu", np.dtype(dtype))  # compile before the clock starts
    return get("cpu")
