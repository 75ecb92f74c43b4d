"""Training on NVIDIA GPUs: CuPy arrays, the Numba CUDA kernels and a gradient exchange
that suits the machine. The only module that imports CuPy.

    $ python -m mpi_dml train --config c.toml --device gpu
    $ mpiexec -n 4 python -m mpi_dml train --config c.toml --device gpu
    $ srun --mpi=pmi2 -N 2 --ntasks-per-node 4 --gpus-per-node 4 python -m mpi_dml train ... --device gpu

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
import queue
import sys
import threading
import warnings

import numpy as np

from ..errors import AgreedError, UserError
from .gpu_exchange import (
    bind_index,
    choose_exchange,
    combine_support,
    cuda_mpi_support,
    shared_gpus,
    sharing_note,
    sharing_warning,
)

INSTALL_HINT = "pip install 'mpi_dml[gpu]'"


def array_module(a):
    """``cupy`` for a CuPy array, else ``numpy``; never imports CuPy itself."""
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy
    return np


def _import_cupy():
    with warnings.catch_warnings():  # CuPy warns at import about optional libraries
        warnings.simplefilter("ignore")
        import cupy
    return cupy


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def unavailable_reason() -> str | None:
    """None when CuPy imports and sees at least one GPU, else why not, in one sentence.

    Local (no collectives) and never raises.
    """
    try:
        cupy = _import_cupy()
    except ModuleNotFoundError as exc:
        if exc.name == "cupy":
            return f"CuPy is not installed; install it with {INSTALL_HINT}"
        return (f"CuPy is installed but cannot be imported ({_first_line(exc)}); reinstall it "
                f"with {INSTALL_HINT}")
    except Exception as exc:
        return (f"CuPy is installed but cannot be imported ({_first_line(exc)}); reinstall it "
                f"with {INSTALL_HINT}, or the cupy-cudaXXx wheel that matches your CUDA")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return (f"CuPy finds no usable GPU ({_first_line(exc)}): this node has no NVIDIA GPU, "
                f"or its driver is missing or older than the CUDA CuPy was built for")
    if count < 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return f"CuPy sees no GPU on this node{hint}"
    return None


def _nccl_module():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cupy.cuda import nccl
    return nccl


def _nccl_status() -> tuple[bool, str]:
    try:
        nccl = _nccl_module()
    except Exception as exc:
        return False, f"cupy.cuda.nccl does not import ({_first_line(exc)})"
    if not getattr(nccl, "available", True):
        return False, "CuPy cannot load the NCCL library (pip install nvidia-nccl-cu12)"
    try:
        v = int(nccl.get_version())
        return True, f"NCCL {v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 10000 else f"NCCL {v}"
    except Exception as exc:
        return False, f"NCCL does not answer ({_first_line(exc)})"


def _gpu_id(cupy, index) -> str:
    """The physical GPU behind visible device ``index`` (its PCI bus id)."""
    try:
        return cupy.cuda.runtime.deviceGetPCIBusId(index)
    except Exception:
        return f"device {index}"


def _gpu_name(cupy, index) -> str:
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
    cupy = _import_cupy()
    n_visible = cupy.cuda.runtime.getDeviceCount()
    index = bind_index(comm.local_rank, n_visible)
    facts = exchange_facts(comm, cupy, index)
    path, why = choose_exchange("auto", size=comm.size, **facts)
    if path == "cuda-aware":
        why += "; confirmed by a test Allreduce when training starts"
    report.update({"available": True, "exchange": path, "why": why, "nccl": facts["nccl_why"],
                   "cuda_aware_mpi": facts["cuda_mpi_why"], "shared": facts["shared"] or None})
    return report, {"gpu": f"{index}: {_gpu_name(cupy, index)} ({_gpu_id(cupy, index)})",
                    "gpus_visible": n_visible}


def _cupy_version():
    try:
        return _import_cupy().__version__
    except Exception:
        return None


def _pinned(cupy, shape, dtype) -> np.ndarray:
    """A NumPy array in page-locked host memory (the memory stays while the array does)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    mem = cupy.cuda.alloc_pinned_memory(max(count * dtype.itemsize, 1))
    return np.frombuffer(mem, dtype, count).reshape(shape)


class _Slot:
    """One batch's pinned host rows and device rows, and the events that guard them."""

    def __init__(self, cupy, cap, x, y):
        self.host_x = _pinned(cupy, (cap, *x.shape[1:]), x.dtype)
        self.host_y = _pinned(cupy, (cap, *y.shape[1:]), y.dtype)
        self.dev_x = cupy.empty((cap, *x.shape[1:]), dtype=x.dtype)
        self.dev_y = cupy.empty((cap, *y.shape[1:]), dtype=y.dtype)
        self.copied = cupy.cuda.Event(disable_timing=True)    # host -> device copy done
        self.consumed = cupy.cuda.Event(disable_timing=True)  # the step using it is done

    def fits(self, cap, x, y) -> bool:
        return (self.host_x.shape[0] >= cap and self.host_x.shape[1:] == x.shape[1:]
                and self.host_x.dtype == x.dtype and self.host_y.shape[1:] == y.shape[1:]
                and self.host_y.dtype == y.dtype)


class _Prefetch(threading.Thread):
    """Fills the two batch slots in turn: gathers a step's rows into the slot's pinned
    buffer, then, once the step that last used the slot has been queued, copies them
    to the GPU on the device's copy stream."""

    def __init__(self, dev, x, y, indices, slots):
        super().__init__(name="mpi_dml-batches", daemon=True)
        self.dev, self.x, self.y, self.indices, self.slots = dev, x, y, indices, slots
        self._free = [threading.Semaphore(1), threading.Semaphore(1)]
        self._ready = queue.Queue()
        self._stopping = False

    def run(self):
        try:
            self.dev.xp.cuda.Device(self.dev.index).use()  # the current device is per thread
            for i, idx in enumerate(self.indices):
                slot, n = self.slots[i % 2], len(idx)
                slot.copied.synchronize()  # the last copy out of this pinned buffer is done
                # mode="clip" writes straight into ``out`` ("raise" copies twice); the
                # plan's indices are in range.
                np.take(self.x, idx, axis=0, out=slot.host_x[:n], mode="clip")
                np.take(self.y, idx, axis=0, out=slot.host_y[:n], mode="clip")
                self._free[i % 2].acquire()  # the step that used the slot has been queued
                if self._stopping:
                    return
                stream = self.dev._copy_stream
                stream.wait_event(slot.consumed)  # ... and the GPU has finished it
                for dev, host in ((slot.dev_x, slot.host_x), (slot.dev_y, slot.host_y)):
                    self.dev._copy(dev, host, host[:n].nbytes, stream, to_device=True)
                slot.copied.record(stream)
                self._ready.put(None)
        except BaseException as exc:  # raised again in the consuming thread
            self._ready.put(exc)

    def wait_ready(self):
        error = self._ready.get()
        if error is not None:
            raise error

    def release(self, k):
        self._free[k].release()

    def stop(self):
        self._stopping = True
        for free in self._free:
            free.release()
        if self.is_alive():
            self.join()


class GpuDevice:
    """CuPy arrays, Numba CUDA kernels and an NCCL / CUDA-aware MPI / host exchange.

    The same methods as ``device.CpuDevice``. Constructing it is collective: every rank
    binds its GPU, the ranks agree on the exchange, and NCCL (if chosen) is set up.
    Computation runs on CuPy's current stream, which is Numba's default stream too.
    """

    kind = "gpu"

    def __init__(self, comm, dtype, *, exchange: str = "auto"):
        self.comm = comm
        self.dtype = np.dtype(dtype)
        self._nccl = None
        self._slots = []
        self._prefetch = None
        self._staging = None
        cupy = self.xp = _import_cupy()
        self.index, self.name, self.n_visible = comm.agreed(self._bind, cupy)
        facts = exchange_facts(comm, cupy, self.index)
        if facts["shared"] and comm.is_root:
            print(sharing_warning(facts["shared"]), file=sys.stderr, flush=True)
        self.exchange, self.why = comm.agreed(choose_exchange, exchange, size=comm.size, **facts)
        if self.exchange == "nccl":
            nccl = self._nccl_lib = _nccl_module()
            self._nccl_types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                                np.dtype(np.float64): nccl.NCCL_FLOAT64}
            self._nccl = self._nccl_communicator()
        elif self.exchange == "cuda-aware":
            self._confirm_cuda_aware(forced=exchange == "cuda-aware")
        self.kernels = comm.agreed(_cuda_kernels, self.dtype, self.index)
        self._copy_stream = cupy.cuda.Stream(non_blocking=True)
        self._staged = cupy.cuda.Event(disable_timing=True)

    # --- setting up ---------------------------------------------------------------------
    def _bind(self, cupy):
        index = None
        try:
            n_visible = cupy.cuda.runtime.getDeviceCount()
            index = bind_index(self.comm.local_rank, n_visible)
            cupy.cuda.Device(index).use()
            cupy.empty(1)  # creates the context now, so a busy or broken GPU fails here
        except Exception as exc:
            which = "a GPU" if index is None else f"GPU {index}"
            raise UserError(f"--device gpu: cannot use {which}: {_first_line(exc)}") from None
        return index, _gpu_name(cupy, index), n_visible

    def _nccl_communicator(self):
        nccl = self._nccl_lib
        uid, error = None, None
        if self.comm.is_root:
            try:
                uid = nccl.get_unique_id()
            except Exception as exc:
                error = f"--gpu-exchange {self.exchange}: NCCL failed to start ({_first_line(exc)})"
        uid, error = self.comm.allgather((uid, error), what="NCCL id")[0]
        if error:
            raise AgreedError(error)
        # Collective over all ranks; NCCL connects them through the id rank 0 made.
        return nccl.NcclCommunicator(self.comm.size, uid, self.comm.rank)

    def _confirm_cuda_aware(self, forced: bool):
        """A small Allreduce on GPU memory must give the right sum on every rank."""
        cupy, size = self.xp, self.comm.size
        error = None
        try:
            probe = cupy.full(16, self.comm.rank + 1, dtype=cupy.float64)
            cupy.cuda.get_current_stream().synchronize()
            self.comm.allreduce_(probe, what="CUDA-aware MPI test")
            want = size * (size + 1) / 2
            if not bool((probe == want).all()):
                error = f"it gave {float(probe[0])} instead of {want}"
        except Exception as exc:
            error = _first_line(exc)
        errors = self.comm.allgather(error, what="CUDA-aware MPI test")
        failed = [(rank, e) for rank, e in enumerate(errors) if e]
        if not failed:
            self.why += "; a test Allreduce on GPU memory gave the right sum"
            return
        rank, why = failed[0]
        msg = f"a test Allreduce on GPU memory failed on rank {rank}: {why}"
        if forced:
            raise AgreedError(f"--gpu-exchange cuda-aware: {msg}; use --gpu-exchange host")
        self.exchange, self.why = "host", f"{self.why}, but {msg}: staging through host memory"

    # --- arrays ---------------------------------------------------------------------------
    def zeros(self, n, dtype):
        return self.xp.zeros(n, dtype=dtype)

    def from_host(self, array):
        return self.xp.asarray(array)

    def to_host(self, array) -> np.ndarray:
        return self.xp.asnumpy(array)

    def synchronize(self):
        self.xp.cuda.Device(self.index).synchronize()

    # --- batches ------------------------------------------------------------------------
    def batches(self, x, y, plan, start, stop):
        """Device (x, y) rows of this rank for steps ``start`` to ``stop - 1`` of ``plan``.

        A helper thread gathers each step's rows on the host into pinned memory and
        copies them to the GPU on a stream of their own, up to two steps ahead: the
        gather and the copy of step s+1 run while step s computes (and while the main
        thread waits for the GPU), and each batch crosses PCIe once. Events order the
        copy stream against the compute stream. The arrays yielded for a step are
        refilled once the next batch is asked for: use them within their step.
        """
        if self._prefetch is not None:
            self._prefetch.stop()  # an earlier generator left unfinished
        indices = [plan.local_indices(step) for step in range(start, stop)]
        if not indices:
            return
        slots = self._batch_slots(max(len(i) for i in indices), x, y)
        compute = self.xp.cuda.get_current_stream()
        for slot in slots:  # whatever is queued so far may still read the slots
            slot.consumed.record(compute)
        prefetch = self._prefetch = _Prefetch(self, x, y, indices, slots)
        prefetch.start()
        try:
            for i, idx in enumerate(indices):
                prefetch.wait_ready()
                slot = slots[i % 2]
                compute.wait_event(slot.copied)
                yield slot.dev_x[:len(idx)], slot.dev_y[:len(idx)]
                slot.consumed.record(compute)  # everything the step queued has read it
                prefetch.release(i % 2)
        finally:
            prefetch.stop()

    def _batch_slots(self, cap, x, y):
        if not (self._slots and all(s.fits(cap, x, y) for s in self._slots)):
            self._slots = []  # free the old buffers before making larger ones
            self._slots = [_Slot(self.xp, max(cap, 1), x, y) for _ in range(2)]
        return self._slots

    def _copy(self, dev, host, nbytes, stream, *, to_device):
        if not nbytes:
            return
        rt = self.xp.cuda.runtime
        if to_device:
            rt.memcpyAsync(dev.data.ptr, host.ctypes.data, nbytes, rt.memcpyHostToDevice, stream.ptr)
        else:
            rt.memcpyAsync(host.ctypes.data, dev.data.ptr, nbytes, rt.memcpyDeviceToHost, stream.ptr)

    # --- the gradient exchange ------------------------------------------------------------
    def allreduce_(self, buf):
        """Sum ``buf`` (a contiguous device array) over ranks, in place."""
        if self.exchange == "none":
            return buf
        if not buf.flags.c_contiguous:
            raise ValueError("allreduce_ needs a contiguous buffer")
        stream = self.xp.cuda.get_current_stream()
        if self.exchange == "nccl":
            # Queued on the compute stream like any kernel; nothing waits for it here.
            nccl = self._nccl_lib
            self._nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size,
                                 self._nccl_types[np.dtype(buf.dtype)], nccl.NCCL_SUM, stream.ptr)
            return buf
        if self.exchange == "cuda-aware":
            stream.synchronize()  # MPI reads the memory now, outside any stream
            return self.comm.allreduce_(buf, what="gradients")
        stage = self._staging_for(buf)
        self._staged.synchronize()  # the last copy back out of the staging buffer is done
        self._copy(buf, stage, buf.nbytes, stream, to_device=False)
        stream.synchronize()
        self.comm.allreduce_(stage, what="gradients")
        self._copy(buf, stage, buf.nbytes, stream, to_device=True)
        self._staged.record(stream)
        return buf

    def _staging_for(self, buf):
        if self._staging is None or self._staging.size < buf.size or self._staging.dtype != buf.dtype:
            self._staging = _pinned(self.xp, (buf.size,), buf.dtype)
        return self._staging[:buf.size]

    # --- reporting and teardown -----------------------------------------------------------
    def describe(self) -> dict:
        return {"device": "gpu",
                "gpu": f"{self.name} (device {self.index} of {self.n_visible} visible)",
                "exchange": self.exchange, "why": self.why}

    def close(self):
        if self._nccl is not None:
            self.synchronize()
            self._nccl.destroy()
            self._nccl = None
        if self._prefetch is not None:
            self._prefetch.stop()
        self._slots = []
        self._prefetch = None
        self._staging = None


def _cuda_kernels(dtype, index):
    """The Numba CUDA kernels on GPU ``index``, compiled for ``dtype`` before timing."""
    # Kernels and CuPy share the legacy default stream: Numba's per-launch stream sync is waste.
    os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")
    try:
        import numba.core.config
        from numba import cuda

        numba.core.config.reload_config()  # numba read its settings at import, before this

        cuda.select_device(index)  # the primary context CuPy uses, so both share it
        from ..kernels import get, warm_up

        kernels = get("cuda")
        warm_up("cuda", dtype)
    except ImportError as exc:
        raise UserError(f"--device gpu: the CUDA kernels cannot be loaded ({_first_line(exc)}); "
                        f"install them with {INSTALL_HINT}") from None
    return kernels
