"""Training from Python: arrays on each rank in, the engine's result out.

    $ mpiexec -n 4 python my_script.py

    >>> engine = fit_arrays(cfg, X, y, comm=None)       # collective
    >>> engine.params, engine.history, engine.scale, engine.model

Each rank passes its own rows (any number, none included). They go through the same
data plan as a file's rows (``data.arrays.ArrayTable``), so the model is the one the
command line would train on every rank's rows concatenated in rank order, and the same
on any number of ranks. ``comm=None`` means every rank of the job; a plain process is
a job of one rank.

Nothing here changes process-wide state (thread limits, environment variables, signal
handlers, the exception hook) unless the program asked for it with ``setup_process``:
a library must not decide for the program that imports it.
"""
from __future__ import annotations

import copy
import os
import sys

# What setup_process has taken over; nothing until it is called.
_PROCESS = {"owned": False, "threads": 0, "hook": False}


def world(comm=None):
    """Our ``Comm`` over ``comm`` (an mpi4py communicator), or over every rank."""
    from ..parallel.comm import Comm

    if isinstance(comm, Comm):
        return comm
    if comm is None:
        return Comm.world()
    return Comm(comm)


def setup_process(*, threads: int = 0, stop_signals: bool = True,
                  abort_on_error: bool = True) -> dict:
    """Let mpi_dml act for the whole process, as the command line does. Collective:
    call it once, early, on every rank of a script (``mpiexec -n 4 python train.py``).

    Parameters
    ----------
    threads : int
        BLAS and Numba threads per rank (0: the cores this rank may use, shared among
        the ranks on its node; or ``SLURM_CPUS_PER_TASK``), so ranks do not
        oversubscribe a node. Also sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``
        and ``MKL_NUM_THREADS`` for libraries loaded later.
    stop_signals : bool
        SIGTERM/SIGUSR1 during a fit stop every rank after the same step and raise
        ``Preempted`` on every rank (exit status 75 through ``abort_on_error``), after
        writing a checkpoint when the fit has a checkpoint folder (without one, nothing
        is saved). If that has not happened ``grace`` seconds (60) after the signal,
        the job ends with status 128 + the signal's number. The handlers are installed
        for the length of each fit only.
    abort_on_error : bool
        An uncaught exception ends the job: one that every rank raised together
        (``errors.AgreedError``: bad input, ``TrainingFailed``, ``Preempted``) prints its
        message once and ends every rank with its exit status (2, 3, 75); any other
        prints its traceback with the rank and host and aborts every rank (MPI_Abort)
        instead of leaving the others waiting in their next collective for ever.

    Returns what was set: ``{"threads_per_rank": n, "blas": [...]}``.
    """
    from ..parallel.threads import apply_threads, threads_per_rank

    comm = world()
    if abort_on_error and not _PROCESS["hook"]:
        _install_exit_hook(comm)
        _PROCESS["hook"] = True
    n = threads_per_rank(threads, comm.ranks_sharing_cpus)
    report = apply_threads(n)
    _PROCESS.update(owned=bool(stop_signals), threads=n)
    return report


def process_owned() -> bool:
    """Whether ``setup_process`` handed the process's signals to mpi_dml."""
    return _PROCESS["owned"]


def _install_exit_hook(comm):
    """``sys.excepthook``: agreed errors end the job with their own status, others
    abort it (``comm.install_abort_hook``, at more than one rank)."""
    from ..errors import AgreedError
    from ..parallel.comm import install_abort_hook

    install_abort_hook()  # does nothing in a job of one rank
    fallback = sys.excepthook

    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, AgreedError):
            fallback(exc_type, exc, tb)
            return
        # Every rank raised it at the same point: one message, and the status that
        # job scripts act on (75: requeue and resume).
        if comm.is_root:
            sys.stderr.write(f"mpi_dml: {exc}\n")
        code = getattr(exc, "exit_code", 2)
        if comm.size > 1:
            comm.abort(code)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    sys.excepthook = hook


def fit_arrays(cfg, x, y, *, comm=None, names=None, model=None, algorithm=None):
    """Collective: train on this rank's rows ``x`` (and labels ``y``, or None) with
    ``cfg``; returns the finished ``Engine`` (``params``, ``history``, ``scale``,
    ``model``, ``data`` and the final metrics as ``final``).

    ``cfg.label_column`` is set to the label's name inside the table of arrays.
    """
    from ..data.arrays import ArrayTable, SparseArrayTable, label_name
    from ..data.training import load_training
    from ..engine import Engine

    comm = world(comm)
    cfg = copy.deepcopy(cfg)  # the caller's stays as given
    cfg.label_column = label_name(names)
    if _PROCESS["owned"] and not cfg.threads:
        cfg.threads = _PROCESS["threads"]  # the fit re-applies setup_process's count
    # Before any rows move: a bad setting is one message on every rank.
    comm.agreed(cfg.validate, world_size=comm.size, files=False)
    if hasattr(x, "tocsr"):  # SciPy sparse rows stay sparse
        table = SparseArrayTable(x, y, comm)
    else:
        table = ArrayTable(x, y, comm, names=names, label=cfg.label_column)
    data = load_training(cfg, comm, table)
    engine = Engine(cfg, comm=comm, data=data, model=model, algorithm=algorithm,
                    process=process_owned())
    engine.final = engine.fit()
    return engine
