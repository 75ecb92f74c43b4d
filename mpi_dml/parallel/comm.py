"""The one place that talks to MPI.

``Comm`` wraps an mpi4py communicator with the handful of operations the engine needs:
in-place gradient Allreduce, parameter broadcast, small metric reductions, agreement
on errors, and streaming rows to rank 0. One process is simply a world of size 1.

    >>> comm = Comm.world()          # MPI_COMM_WORLD, size 1 under plain `python`
    >>> comm.allreduce_(grad_buffer) # in place, summed over ranks
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from contextlib import nullcontext

import numpy as np
from mpi4py import MPI

from ..errors import AgreedError, UserError
from .threads import allowed_cpus

_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}


class Comm:
    """Rank, size and node layout of one communicator, plus the collectives we use.

    Parameters
    ----------
    mpi_comm : mpi4py.MPI.Comm
        The communicator to use. It is used as given (not duplicated), so the caller
        owns it; ``Comm.world()`` is the usual choice.
    """

    def __init__(self, mpi_comm):
        self._comm = mpi_comm
        # Set by the engine while a stall watchdog runs (see watchdog.py): every
        # collective below then tells it which operation this rank is waiting in.
        self.watchdog = None
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()
        self.host = socket.gethostname()
        # Helper threads (watchdog, signal watcher) may call MPI only at this level.
        # mpi4py asks for it by default; Cray MPICH grants less unless
        # MPICH_MAX_THREAD_SAFETY=multiple.
        self.threads_ok = MPI.Query_thread() == MPI.THREAD_MULTIPLE
        # Ranks that can share memory are on one node; that split is what decides
        # local rank (GPU binding) and how many cores each rank may use.
        node_comm = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node_comm.Get_rank()
        self.local_size = node_comm.Get_size()
        # Ranks bound to the same CPU set share those cores; ranks bound to their own
        # subsets (srun --cpu-bind, mpiexec -bind-to core) do not.
        cpus = allowed_cpus()
        self.ranks_sharing_cpus = sum(c == cpus for c in node_comm.allgather(cpus))
        leader = 1 if self.local_rank == 0 else 0
        leaders_below = self.exscan_int(leader)
        # A node's index is the number of node leaders with a lower world rank.
        self.node = node_comm.bcast(leaders_below, root=0)
        self.n_nodes = self.allreduce_int(leader)
        node_comm.Free()

    @classmethod
    def world(cls) -> "Comm":
        return cls(MPI.COMM_WORLD)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def watched(self, operation: str):
        """Context in which this rank waits for the others (for the stall watchdog)."""
        if self.watchdog is None or self.size == 1:
            return nullcontext()
        return self.watchdog.waiting_in(operation)

    # --- collectives on numpy buffers -------------------------------------------------
    def allreduce_(self, buf, op: str = "sum", *, what: str = "values"):
        """Reduce ``buf`` across ranks in place and return it."""
        if self.size > 1:
            with self.watched(f"Allreduce({what})"):
                self._comm.Allreduce(MPI.IN_PLACE, buf, op=_OPS[op])
        return buf

    def bcast_(self, buf, root: int = 0, *, what: str = "values"):
        """Overwrite ``buf`` on every rank with its contents on ``root``."""
        if self.size > 1:
            with self.watched(f"Bcast({what})"):
                self._comm.Bcast(buf, root=root)
        return buf

    def bcast_obj(self, obj, root: int = 0, *, what: str = "values"):
        """``root``'s small Python object (a dict of settings, a path) on every rank."""
        if self.size == 1:
            return obj
        with self.watched(f"Bcast({what})"):
            return self._comm.bcast(obj, root=root)

    def exscan_int(self, value: int) -> int:
        """Sum of ``value`` over lower ranks (0 on rank 0)."""
        if self.size == 1:
            return 0
        out = self._comm.exscan(int(value))
        return 0 if out is None else int(out)

    def allreduce_int(self, value: int, op: str = "sum") -> int:
        with self.watched("Allreduce(flag)"):
            return int(self._comm.allreduce(int(value), op=_OPS[op]))

    def allgather(self, obj, *, what: str = "values") -> list:
        """Gather a small Python object (counts, names) from every rank."""
        with self.watched(f"Allgather({what})"):
            return self._comm.allgather(obj)

    def alltoallv_rows(self, send, send_rows, recv, recv_rows, *, what: str = "rows"):
        """Exchange rows of 2-D float64 arrays: ``send_rows[r]`` consecutive rows of
        ``send`` go to rank ``r``, and ``recv`` receives ``recv_rows[r]`` rows from each
        rank ``r``, in rank order."""
        width = send.shape[1] if send.ndim == 2 else recv.shape[1]
        if self.size == 1:
            recv[...] = send.reshape(recv.shape)
            return recv

        def layout(rows):
            counts = np.asarray(rows, dtype=np.int64) * width
            return counts, np.concatenate(([0], np.cumsum(counts)[:-1]))

        with self.watched(f"Alltoallv({what})"):
            self._comm.Alltoallv([np.ascontiguousarray(send, np.float64),
                                  layout(send_rows), MPI.DOUBLE],
                                 [recv, layout(recv_rows), MPI.DOUBLE])
        return recv

    def barrier(self):
        with self.watched("Barrier"):
            self._comm.Barrier()

    def side_channel(self) -> "SideChannel":
        """Collective: a private duplicate communicator for messages sent from a
        helper thread (the watchdog) while the main thread is inside a collective."""
        return SideChannel(self._comm.Dup())

    # --- streaming to rank 0 ------------------------------------------------------------
    def stream_to_root(self, chunk, consume):
        """Call ``consume(chunk)`` on rank 0 for each rank's ``chunk``, in rank order.

        Rank 0 holds one rank's chunk at a time, so predictions of any size can be
        written in input order without gathering them all in memory.
        """
        if self.rank == 0:
            consume(chunk)
            for src in range(1, self.size):
                consume(self._comm.recv(source=src, tag=71))
        else:
            self._comm.send(chunk, dest=0, tag=71)

    # --- agreeing on errors -------------------------------------------------------------
    def agree(self, error: str | None, *, name_rank: bool = True):
        """Collective: raise ``AgreedError`` on every rank if any rank reports an error.

        The message is the lowest failing rank's. When only some ranks failed it names
        the rank and host, since the problem is in that rank's part of the input
        (``name_rank=False`` where only one rank could have failed).
        """
        errors = self.allgather(None if error is None else (error, self.host), what="errors")
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if not failed:
            return
        rank, (message, host) = failed[0]
        if name_rank and self.size > 1 and len(failed) < self.size:
            message = f"{message} (reported by rank {rank} on {host})"
        raise AgreedError(message)

    def agreed(self, fn, *args, **kwargs):
        """Run ``fn`` on every rank; if it raises UserError anywhere, all ranks raise."""
        return self._agreed(fn, args, kwargs, name_rank=True)

    def agreed_on_root(self, fn, *args, **kwargs):
        """Like ``agreed``, but ``fn`` runs on rank 0 alone: for checks of what only
        rank 0 writes (output paths), whose file system may differ from the others'."""
        return self._agreed(fn if self.is_root else _nothing, args, kwargs, name_rank=False)

    def _agreed(self, fn, args, kwargs, *, name_rank):
        try:
            result, error = fn(*args, **kwargs), None
        except AgreedError:
            raise
        except UserError as exc:
            result, error = None, str(exc)
        self.agree(error, name_rank=name_rank)
        return result

    def abort(self, code: int = 1):
        abort_job(self._comm, code)

    def abort_from_thread(self, code: int):
        """End the job from a helper thread: MPI_Abort where MPI allows calls from
        threads, else exit this process, which the launcher turns into the end of all."""
        if self.threads_ok:
            abort_job(self._comm, code)
        sys.stderr.flush()
        os._exit(code)


def _nothing(*_args, **_kwargs):
    return None


class SideChannel:
    """Point-to-point messages on a communicator of their own, safe to use from a
    second thread (mpi4py initialises MPI with MPI_THREAD_MULTIPLE)."""

    def __init__(self, mpi_comm):
        self._comm = mpi_comm
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()

    def post_receive(self, tag: int, source: int | None = None):
        """A pending receive of one small object; poll it with ``poll``."""
        return self._comm.irecv(source=MPI.ANY_SOURCE if source is None else source, tag=tag)

    @staticmethod
    def poll(request):
        """(True, (source, message)) once ``request`` has completed, else (False, None)."""
        status = MPI.Status()
        done, message = request.test(status)
        return (True, (status.Get_source(), message)) if done else (False, None)

    # Sends given up before they completed: their pickled buffers must stay alive for
    # as long as MPI might still read them, i.e. until the process ends.
    _given_up: list = []

    def send(self, obj, dest: int, tag: int):
        """Start sending; the returned request completes once the message has left. The
        caller owns it: ``completed`` until it has, or ``finish_send`` before ``free``."""
        return self._comm.isend(obj, dest=dest, tag=tag)

    @staticmethod
    def completed(request) -> bool:
        """Whether a request from ``send`` has completed (MPI then frees it)."""
        return request.Test()

    @classmethod
    def finish_send(cls, request, wait: float = 0.5):
        """Complete a send that may never be received, or give it up: a small message
        completes as soon as it has left; one still waiting for its receiver after
        ``wait`` seconds is cancelled and freed. MPICH does not cancel a send that
        waits for its receiver, so waiting after the cancel could last for ever."""
        deadline = time.monotonic() + wait
        try:
            while not request.Test():
                if time.monotonic() >= deadline:
                    request.Cancel()
                    if not request.Test():
                        cls._given_up.append(request)
                        request.Free()
                    return
                time.sleep(0.01)
        except MPI.Exception:
            pass

    @staticmethod
    def cancel(request):
        """Cancel a pending receive and free it (the wait after a cancel of a receive
        returns at once)."""
        try:
            request.Cancel()
            request.Wait()
        except MPI.Exception:
            pass

    def abort(self, code: int):
        abort_job(MPI.COMM_WORLD, code)

    def free(self):
        self._comm.Free()


def launcher_mismatch(world_size: int, environ=os.environ) -> str | None:
    """Why this process should not run: Slurm started N > 1 tasks but MPI sees a
    world of 1, i.e. ``srun`` ran without MPI wire-up (``--mpi=none``, its default on
    many sites) and every task would train alone on all the data."""
    tasks = environ.get("SLURM_STEP_NUM_TASKS")
    if world_size != 1 or not tasks or not tasks.isdigit() or int(tasks) <= 1:
        return None
    return (f"Slurm started {tasks} tasks, but MPI sees a world of 1 in each: srun did not "
            f"connect them (its --mpi=none default). Launch with `srun --mpi=pmi2` for the "
            f"MPICH wheel from PyPI, or `srun --mpi=pmix` for Open MPI; `srun --mpi=list` "
            f"shows what this cluster offers.")


def mpi_library() -> dict:
    """What MPI this process runs on, for `info` and model metadata."""
    return {
        "library": library_name(MPI.Get_library_version()),
        "standard": "%d.%d" % MPI.Get_version(),
        "mpi4py": __import__("mpi4py").__version__,
    }


def mpi_library_version() -> str:
    """The MPI library's own version text (MPI_Get_library_version), from which
    ``cuda_aware_mpi`` tells the vendor."""
    return version_text(MPI.Get_library_version())


def version_text(raw: str) -> str:
    """MPI_Get_library_version's text as mpi4py returns it, up to the C string's end.

    Open MPI counts the terminating NUL in the length it reports, so mpi4py's string
    ends in "\\0", which ``str.strip()`` keeps; whatever follows a NUL is not text.
    """
    return raw.split("\0", 1)[0].strip()


def library_name(raw: str) -> str:
    """The first line of the version text: the library and its version."""
    text = version_text(raw)
    return text.splitlines()[0].strip() if text else ""


def abort_job(mpi_comm, code: int):
    """MPI_Abort, after giving the launcher a moment to forward what this rank wrote.

    mpiexec ends every process as soon as one aborts; without the pause, the message
    that says why (the traceback, the stall report) is sometimes lost on the way.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)
    mpi_comm.Abort(code)


def install_abort_hook():
    """Make an uncaught exception on any rank end the whole job.

    Plain ``python`` under mpiexec leaves the other ranks waiting forever in their next
    collective. The hook prints the traceback once, naming rank and host, then calls
    MPI_Abort, which the launcher turns into the end of every rank.
    """
    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        return

    def hook(exc_type, exc, tb):
        rank, host = world.Get_rank(), socket.gethostname()
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        sys.stderr.write(f"mpi_dml: rank {rank} on {host} failed; aborting the job.\n{text}")
        abort_job(world, 1)

    sys.excepthook = hook
