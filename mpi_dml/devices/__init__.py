"""Where training computes: the array module, the kernels and the gradient exchange.

The engine talks to one device and never asks which kind it is. On the CPU
(``cpu.CpuDevice``) the arrays are NumPy arrays, the kernels are the Numba ones and the
exchange is the MPI Allreduce of ``Comm``. The GPU device (``gpu_device.GpuDevice``)
has the same methods over CuPy arrays.

    >>> dev = select_device("cpu", comm, np.float32)
    >>> grads = dev.zeros(model.size, np.float32)
    >>> for xb, yb in dev.batches(x, y, plan, 0, steps): ...
    >>> dev.allreduce_(grads)
"""
from __future__ import annotations

from ..errors import UserError
from .cpu import CpuDevice

DEVICES = ("auto", "cpu", "gpu")
# --data-on-device: where a GPU keeps the rank's training rows (see GpuDevice.place_rows).
ROW_PLACEMENTS = ("auto", "yes", "no")


def select_device(requested: str, comm, dtype, *, kernels=None, exchange: str = "auto",
                  tf32: bool = False):
    """The device for ``--device``: cpu, gpu, or auto (the GPU when CuPy sees one).

    Collective: every rank gets the same kind. A GPU missing on one rank fails the job
    on all of them with one message (``gpu``) or puts every rank on the CPU (``auto``).
    """
    if requested not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}; got {requested!r}")
    if requested == "cpu":
        return CpuDevice(comm, dtype, kernels)
    from . import gpu, gpu_device

    reason = gpu.unavailable_reason()  # local: imports CuPy, counts GPUs, no collectives
    everywhere = comm.allreduce_int(reason is None, op="min")
    if requested == "auto" and not everywhere:
        return CpuDevice(comm, dtype, kernels)
    comm.agree(None if reason is None else f"--device gpu: {reason}")
    return gpu_device.GpuDevice(comm, dtype, exchange=exchange, tf32=tf32)  # collective

