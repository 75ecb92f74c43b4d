"""NVIDIA GPUs: whether CuPy and a GPU are there, what each rank would use, and which
gradient exchange suits the machine. The only module that imports CuPy
(``import_cupy``); the device itself is ``gpu_device.GpuDevice``.

    $ python -m mpi_dml info        # "gpu": each rank's GPU and the exchange, and why

Each rank computes on GPU ``local rank % visible GPUs`` of its node (the local rank
comes from MPI's shared-memory split, never from launcher variables). Ranks that end
up on one GPU work, but split it; rank 0 then prints one warning.

The summed gradient moves by the first of these that works (``--gpu-exchange auto``):

1. ``nccl``: NCCL through ``cupy.cuda.nccl``, when every rank can load NCCL and has a
   GPU of its own (NCCL refuses two ranks on one GPU).
2. ``cuda-aware``: MPI Allreduce straight on GPU memory. Only when the MPI library
   itself says it accepts GPU memory (``cuda_aware_mpi.mpi_cuda_support``), or the
   user says so with ``MPI_DML_CUDA_AWARE_MPI=1``, and only after a test Allreduce on
   GPU memory gave the right sum on every rank. An MPI that is not CUDA-aware treats
   a GPU pointer as host memory and the process dies of SIGSEGV, which its launcher
   turns into the end of the whole job: so GPU memory is never handed to an MPI that
   has not said it takes it, and the test only confirms what the library claims.
3. ``host``: copy to a pinned host buffer, MPI Allreduce there, copy back.

With one rank there is nothing to exchange (``none``). ``--gpu-exchange nccl``,
``cuda-aware`` or ``host`` forces a path; a forced path that cannot work stops every
rank with one message.

What does not need a GPU (binding arithmetic, the choice of exchange, the messages)
lives in ``gpu_exchange`` as pure functions, tested without one.
"""
from __future__ import annotations

import os
import warnings

import numpy

from .gpu_exchange import (
    bind_index,
    choose_exchange,
    combine_support,
    cuda_mpi_support,
    shared_gpus,
    sharing_note,
)

INSTALL_HINT = "pip install 'mpi_dml[gpu]'"


def import_cupy():
    with warnings.catch_warnings():  # CuPy warns at import about optional libraries
        warnings.simplefilter("ignore")
        import cupy
    return cupy


def cupyx_sparse():
    """``cupyx.scipy.sparse``: CSR rows on the GPU, multiplied by cuSPARSE."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import cupyx.scipy.sparse
    return cupyx.scipy.sparse


def csr_on_device(x):
    """Host CSR rows (SciPy) as CuPy's CSR: the three arrays cross to the GPU as they
    are, so the rows stay sorted and nothing is made dense."""
    cupy = import_cupy()
    return cupyx_sparse().csr_matrix(
        (cupy.asarray(x.data), cupy.asarray(x.indices), cupy.asarray(x.indptr)), shape=x.shape)


def first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# What to do about a failure in setting up the GPU, by the exception's class name (CuPy's,
# Numba's and NCCL's classes are matched by name, so none of them is imported here).
_BUILD_ERRORS = ("NvvmError", "NvvmSupportError", "LinkerError", "NvrtcError",
                 "NvrtcCompilationError", "NvrtcSupportError")
_DRIVER_ERRORS = ("CudaAPIError", "CudaDriverError", "CudaSupportError", "CUDARuntimeError",
                  "CUDADriverError", "CudaRuntimeError")


def setup_failure(what: str, exc: BaseException) -> str:
    """One line for a failed step of setting up the GPU: what failed, the exception's
    class and first line, and what to do about it."""
    name = type(exc).__name__
    cause = f"{what} failed: {name}: {first_line(exc).rstrip('.')}"
    if isinstance(exc, MemoryError) or "OUT_OF_MEMORY" in str(exc) or "OutOfMemory" in name:
        hint = ("the GPU's memory is taken: look for other processes on it with nvidia-smi, "
                "start fewer ranks per GPU, or use a smaller model or --batch-size")
    elif name in _BUILD_ERRORS:
        hint = ("Numba cannot build the CUDA kernels for this GPU and driver: install the "
                "numba-cuda wheel for the driver's CUDA version ('numba-cuda[cu12]' or "
                "'numba-cuda[cu13]')")
    elif name in _DRIVER_ERRORS:
        hint = "check that GPU and its driver with nvidia-smi on that node"
    elif name == "NcclError":
        hint = "use --gpu-exchange host to train without NCCL"
    else:
        return cause
    return f"{cause}; {hint}"


def unavailable_reason() -> str | None:
    """None when CuPy imports and sees at least one GPU, else why not, in one sentence.

    Local (no collectives) and never raises.
    """
    try:
        cupy = import_cupy()
    except ModuleNotFoundError as exc:
        if exc.name == "cupy":
            return f"CuPy is not installed; install it with {INSTALL_HINT}"
        return (f"CuPy is installed but cannot be imported ({first_line(exc)}); reinstall it "
                f"with {INSTALL_HINT}")
    except Exception as exc:
        return (f"CuPy is installed but cannot be imported ({first_line(exc)}); reinstall it "
                f"with {INSTALL_HINT}, or the cupy-cudaXXx wheel that matches your CUDA")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return (f"CuPy finds no usable GPU ({first_line(exc)}): this node has no NVIDIA GPU, "
                f"or its driver is missing or older than the CUDA CuPy was built for")
    if count < 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return f"CuPy sees no GPU on this node{hint}"
    return None


def set_float32_products(cupy, tf32: bool):
    """How cuBLAS multiplies float32 matrices in this process, for CuPy: on TF32 tensor
    cores (inputs rounded to 10 bits of mantissa, sums in float32) or in full float32.
    Returns the setting it replaced, to put back."""
    core = cupy._core
    kinds = core._routines_linalg
    previous = core.get_compute_type(numpy.float32)
    core.set_compute_type(numpy.float32,
                          kinds.COMPUTE_TYPE_TF32 if tf32 else kinds.COMPUTE_TYPE_DEFAULT)
    return previous


def restore_float32_products(cupy, previous):
    cupy._core.set_compute_type(numpy.float32, previous)


def nccl_module():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cupy.cuda import nccl
    return nccl


def _nccl_status() -> tuple[bool, str]:
    try:
        nccl = nccl_module()
    except Exception as exc:
        return False, f"cupy.cuda.nccl does not import ({first_line(exc)})"
    if not getattr(nccl, "available", True):
        return False, "CuPy cannot load the NCCL library (pip install nvidia-nccl-cu12)"
    try:
        v = int(nccl.get_version())
        return True, f"NCCL {v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 10000 else f"NCCL {v}"
    except Exception as exc:
        return False, f"NCCL does not answer ({first_line(exc)})"


def _gpu_id(cupy, index) -> str:
    """The physical GPU behind visible device ``index`` (its PCI bus id)."""
    try:
        return cupy.cuda.runtime.deviceGetPCIBusId(index)
    except Exception:
        return f"device {index}"


def gpu_name(cupy, index) -> str:
    try:
        name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "GPU"


def exchange_facts(comm, cupy, index) -> dict:
    """Collective: what decides the exchange, the same on every rank."""
    placements = comm.allgather((comm.host, _gpu_id(cupy, index)), what="GPU placement")
    nccl_ok, nccl_why = _nccl_status()
    cuda, cuda_why = cuda_mpi_support()
    answers = comm.allgather((nccl_ok, nccl_why, cuda, cuda_why), what="GPU exchange support")
    return {**combine_support(answers), "shared": sharing_note(shared_gpus(placements))}


def gpu_report(comm) -> tuple[dict, dict]:
    """Collective, for ``info``: (job-wide GPU facts, this rank's GPU)."""
    reasons = comm.allgather(unavailable_reason(), what="GPU availability")
    report = {"cupy": _cupy_version()}
    failed = [(rank, why) for rank, why in enumerate(reasons) if why]
    if failed:
        rank, why = failed[0]
        if len(failed) < comm.size:
            why += f" (rank {rank}; --device auto would use the CPU on every rank)"
        return {**report, "available": False, "reason": why, "exchange": None}, {"gpu": None}
    cupy = import_cupy()
    n_visible = cupy.cuda.runtime.getDeviceCount()
    index = bind_index(comm.local_rank, n_visible)
    facts = exchange_facts(comm, cupy, index)
    path, why = choose_exchange("auto", size=comm.size, **facts)
    if path == "cuda-aware":
        why += "; confirmed by a test Allreduce when training starts"
    report.update({"available": True, "exchange": path, "why": why, "nccl": facts["nccl_why"],
                   "cuda_aware_mpi": facts["cuda_mpi_why"], "shared": facts["shared"] or None})
    return report, {"gpu": f"{index}: {gpu_name(cupy, index)} ({_gpu_id(cupy, index)})",
                    "gpus_visible": n_visible}


def _cupy_version():
    try:
        return import_cupy().__version__
    except Exception:
        return None

