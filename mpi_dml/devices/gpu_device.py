"""Training on NVIDIA GPUs: CuPy arrays, the Numba CUDA kernels and the gradient
exchange that ``gpu`` chose.

    $ python -m mpi_dml train --config c.toml --device gpu
    $ mpiexec -n 4 python -m mpi_dml train --config c.toml --device gpu
    $ srun --mpi=pmi2 -N 2 --ntasks-per-node 4 --gpus-per-node 4 python -m mpi_dml train ... --device gpu
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import EXIT_USER_ERROR, AgreedError, UserError
from . import gpu
from .gpu_exchange import bind_index, choose_exchange, sharing_warning
from .gpu_overlap import EarlyExchange
from .prefetch import BatchSlot, Prefetch, pinned


class GpuDevice:
    """CuPy arrays, Numba CUDA kernels and an NCCL / CUDA-aware MPI / host exchange.

    The same methods as ``devices.cpu.CpuDevice``. Constructing it is collective: every rank
    binds its GPU, the ranks agree on the exchange, and NCCL (if chosen) is set up.
    Computation runs on CuPy's current stream, which is Numba's default stream too.
    """

    kind = "gpu"

    def __init__(self, comm, dtype, *, exchange: str = "auto", tf32: bool = False):
        self.comm = comm
        self.dtype = np.dtype(dtype)
        self.index = None
        self._products = None
        self._early = None
        self.rows_on_device = False
        self._nccl = None
        self._slots = []
        self._prefetch = None
        self._staging = None
        cupy = self.xp = gpu.import_cupy()
        # Each step is agreed: a failure on one rank stops every rank with one message,
        # where the others would otherwise wait for it in the next collective.
        self.index, self.name, self.n_visible = comm.agreed(self._bind, cupy)
        # --tf32: float32 products on tensor cores with 10-bit inputs; put back on close.
        self.tf32 = bool(tf32)
        self._products = gpu.set_float32_products(cupy, self.tf32)
        self.kernels = self.setup_step(f"compiling the CUDA kernels on GPU {self.index}",
                                       _cuda_kernels, self.dtype, self.index)
        self.copy_stream, self._staged = self.setup_step(
            f"creating streams on GPU {self.index}",
            lambda: (cupy.cuda.Stream(non_blocking=True), cupy.cuda.Event(disable_timing=True)))
        facts = gpu.exchange_facts(comm, cupy, self.index)
        if facts["shared"] and comm.is_root:
            print(sharing_warning(facts["shared"]), file=sys.stderr, flush=True)
        self.exchange, self.why = comm.agreed(choose_exchange, exchange, size=comm.size, **facts)
        if self.exchange == "nccl":
            nccl = self._nccl_lib = gpu.nccl_module()
            self._nccl_types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                                np.dtype(np.float64): nccl.NCCL_FLOAT64}
            # Last: NCCL's start is a rendezvous outside MPI (see _nccl_communicator).
            self._nccl = self._nccl_communicator()
            self._early = EarlyExchange(cupy, nccl, self._nccl, self._nccl_types)
        elif self.exchange == "cuda-aware":
            self._confirm_cuda_aware(forced=exchange == "cuda-aware")

    def setup_step(self, what: str, fn, *args, **kwargs):
        """Collective: ``fn(*args, **kwargs)`` on every rank. Whatever it raises on any
        rank (a driver, NVVM or linker error, the GPU's memory running out) becomes one
        ``AgreedError`` on all of them, naming the rank, its host and the cause."""
        return self.comm.agreed(_as_user_error, what, fn, *args, **kwargs)

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
            raise UserError(f"--device gpu: cannot use {which}: {gpu.first_line(exc)}") from None
        return index, gpu.gpu_name(cupy, index), n_visible

    def _nccl_communicator(self):
        nccl = self._nccl_lib
        uid, error = None, None
        if self.comm.is_root:
            try:
                uid = nccl.get_unique_id()
            except Exception as exc:
                error = f"--gpu-exchange {self.exchange}: NCCL failed to start ({gpu.first_line(exc)})"
        uid, error = self.comm.allgather((uid, error), what="NCCL id")[0]
        if error:
            raise AgreedError(error)
        # Collective over all ranks; NCCL connects them through the id rank 0 made.
        try:
            return nccl.NcclCommunicator(self.comm.size, uid, self.comm.rank)
        except Exception as exc:
            failure = gpu.setup_failure(f"--gpu-exchange nccl: starting NCCL on GPU {self.index}",
                                        exc)
        if self.comm.size == 1:
            raise AgreedError(failure)
        # The other ranks wait inside ncclCommInitRank for this one, where no MPI message
        # reaches them: only ending the job frees them.
        print(f"mpi_dml: error on rank {self.comm.rank} ({self.comm.host}): {failure}",
              file=sys.stderr, flush=True)
        self.comm.abort(EXIT_USER_ERROR)

    def _confirm_cuda_aware(self, forced: bool):
        """A small Allreduce on GPU memory must give the right sum on every rank."""
        cupy, size = self.xp, self.comm.size

        def make_probe():
            probe = cupy.full(16, self.comm.rank + 1, dtype=cupy.float64)
            cupy.cuda.get_current_stream().synchronize()
            return probe
        # Agreed apart from the Allreduce: a rank without its probe must not leave the
        # others inside the Allreduce while it waits in the next collective.
        probe = self.setup_step(f"the CUDA-aware MPI test on GPU {self.index}", make_probe)
        error = None
        try:
            self.comm.allreduce_(probe, what="CUDA-aware MPI test")
            want = size * (size + 1) / 2
            if not bool((probe == want).all()):
                error = f"it gave {float(probe[0])} instead of {want}"
        except Exception as exc:
            error = gpu.first_line(exc)
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
        if hasattr(array, "indptr"):  # CSR rows: CuPy's CSR, never made dense
            return gpu.csr_on_device(array)
        return self.xp.asarray(array)

    def to_host(self, array) -> np.ndarray:
        return self.xp.asnumpy(array)

    def synchronize(self):
        self.xp.cuda.Device(self.index).synchronize()

    # --- batches ------------------------------------------------------------------------
    def place_rows(self, x, y, mode):
        """The rows batches are gathered from, for ``--data-on-device mode``: in GPU memory
        (``yes``, or ``auto`` when they take at most half of its free memory, leaving the
        rest to the steps), else where they are. Rows in GPU memory cross PCIe once, here;
        rows on the host cross it batch by batch. Sparse rows stay on the host: a batch
        of them is small, and is gathered there (``batches``)."""
        if hasattr(x, "indptr"):
            return x, y
        nbytes = x.nbytes + y.nbytes
        if mode == "auto":
            free, _ = self.xp.cuda.runtime.memGetInfo()
            mode = "yes" if nbytes <= free // 2 else "no"
        if mode == "no":
            return x, y
        try:
            placed = self.xp.asarray(x), self.xp.asarray(y)
        except Exception as exc:
            raise UserError(f"--device gpu: --data-on-device yes: putting this rank's {len(x)} "
                            f"training rows ({nbytes:,} bytes) in GPU memory failed: "
                            f"{type(exc).__name__}: {gpu.first_line(exc).rstrip('.')}; use "
                            f"--data-on-device auto or no") from None
        self.rows_on_device = True
        return placed

    def batches(self, x, y, plan, start, stop):
        """Device (x, y) rows of this rank for steps ``start`` to ``stop - 1`` of ``plan``.

        Rows already in GPU memory (``place_rows``) are gathered there, by one kernel a
        batch, from row numbers that cross PCIe once an epoch. Otherwise a helper thread gathers each step's rows on the host into pinned memory and
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
        if hasattr(x, "indptr"):
            yield from self._sparse_batches(x, y, indices)
            return
        if isinstance(x, self.xp.ndarray):
            yield from self._gathered_on_device(x, y, indices)
            return
        slots = self._batch_slots(max(len(i) for i in indices), x, y)
        compute = self.xp.cuda.get_current_stream()
        for slot in slots:  # whatever is queued so far may still read the slots
            slot.consumed.record(compute)
        prefetch = self._prefetch = Prefetch(self, x, y, indices, slots)
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

    def _gathered_on_device(self, x, y, indices):
        xp = self.xp
        rows = xp.asarray(np.concatenate(indices).astype(np.int64, copy=False))
        ends = np.cumsum([len(idx) for idx in indices])
        for end, idx in zip(ends, indices):
            picked = rows[end - len(idx):end]
            yield xp.take(x, picked, axis=0), xp.take(y, picked, axis=0)

    def _sparse_batches(self, x, y, indices):
        """CSR rows gathered on the host (SciPy keeps each row's columns sorted) and
        sent as CuPy's CSR: the nonzeros cross PCIe, never rows x features."""
        for idx in indices:
            yield gpu.csr_on_device(x[idx]), self.xp.asarray(y[idx])

    def _batch_slots(self, cap, x, y):
        if not (self._slots and all(s.fits(cap, x, y) for s in self._slots)):
            self._free_slots()  # the old buffers go before larger ones are made
            self._slots = [BatchSlot(self.xp, max(cap, 1), x, y) for _ in range(2)]
        return self._slots

    def _free_slots(self):
        """Drop the batch buffers once nothing queued can touch them: a copy into them
        may still run on the copy stream, and a step may still read them on the compute
        stream. Freed memory goes back to CuPy's pools, whose next user would otherwise
        race those."""
        if self._slots:
            self.synchronize()
        self._slots = []
        if self._prefetch is not None:
            self._prefetch.slots = []  # its last reference to them

    def copy_async(self, dev, host, nbytes, stream, *, to_device):
        """Queue a copy of ``nbytes`` between a device and a (pinned) host array on
        ``stream``; nothing waits for it here."""
        if not nbytes:
            return
        rt = self.xp.cuda.runtime
        if to_device:
            rt.memcpyAsync(dev.data.ptr, host.ctypes.data, nbytes, rt.memcpyHostToDevice, stream.ptr)
        else:
            rt.memcpyAsync(host.ctypes.data, dev.data.ptr, nbytes, rt.memcpyDeviceToHost, stream.ptr)

    # --- the gradient exchange ------------------------------------------------------------
    def exchange_as_ready(self, buf):
        """``ready(end)`` for a backward that fills ``buf`` from the front: with NCCL, each
        finished part is summed at once on a stream of its own (``gpu_overlap``); None
        where the exchange waits for the whole buffer (host and CUDA-aware MPI)."""
        return None if self._early is None else self._early.start(buf)

    def allreduce_(self, buf):
        """Sum ``buf`` (a contiguous device array) over ranks, in place."""
        if self.exchange == "none":
            return buf
        if not buf.flags.c_contiguous:
            raise ValueError("allreduce_ needs a contiguous buffer")
        stream = self.xp.cuda.get_current_stream()
        if self.exchange == "nccl":
            if self._early.finish(buf):  # parts went during backward: the rest follows
                return buf
            # Queued on the compute stream like any kernel; nothing waits for it here.
            nccl = self._nccl_lib
            self._nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size,
                                 self._nccl_types[np.dtype(buf.dtype)], nccl.NCCL_SUM, stream.ptr)
            return buf
        if self.exchange == "cuda-aware":
            stream.synchronize()  # MPI reads the memory now, outside any stream
            return self.comm.allreduce_(buf, what="gradients")
        self._staged.synchronize()  # the last copy back out of the staging buffer is done
        stage = self._staging_for(buf)  # (which may free it)
        self.copy_async(buf, stage, buf.nbytes, stream, to_device=False)
        stream.synchronize()
        self.comm.allreduce_(stage, what="gradients")
        self.copy_async(buf, stage, buf.nbytes, stream, to_device=True)
        self._staged.record(stream)
        return buf

    def _staging_for(self, buf):
        if self._staging is None or self._staging.size < buf.size or self._staging.dtype != buf.dtype:
            self._staging = pinned(self.xp, (buf.size,), buf.dtype)
        return self._staging[:buf.size]

    # --- reporting and teardown -----------------------------------------------------------
    def describe(self) -> dict:
        return {"device": "gpu",
                "gpu": f"{self.name} (device {self.index} of {self.n_visible} visible)",
                "exchange": self.exchange, "why": self.why,
                "data_on_device": self.rows_on_device, "tf32": self.tf32}

    def close(self):
        if self._nccl is not None:
            self.synchronize()
            self._nccl.destroy()
            self._nccl = None
        if self._prefetch is not None:
            self._prefetch.stop()
        self._free_slots()
        self._prefetch = None
        if self._staging is not None:
            self._staged.synchronize()  # the last copy out of the staging buffer is done
        self._staging = None
        if self._products is not None:
            gpu.restore_float32_products(self.xp, self._products)
            self._products = None


def _as_user_error(what, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"--device gpu: {gpu.setup_failure(what, exc)}") from None


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
        raise UserError(f"--device gpu: the CUDA kernels cannot be loaded ({gpu.first_line(exc)}); "
                        f"install them with {gpu.INSTALL_HINT}") from None
    return kernels

