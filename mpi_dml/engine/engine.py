"""The engine: one loop of rounds that drives any training algorithm across the ranks.

    $ python -m mpi_dml train --config examples/digits.toml
    $ mpiexec -n 4 python -m mpi_dml train --config examples/digits.toml

or from Python, with a communicator the caller owns:

    from mpi_dml.engine import Engine
    from mpi_dml.parallel.comm import Comm
    metrics = Engine(cfg, comm=Comm.world()).fit()

Each round is one Allreduce (``algorithms.base`` has the contract): the algorithm
says what it needs, the engine hands it this rank's rows, the algorithm writes its
sums into the buffer, the engine reduces the buffer with two control slots on its end
(a stop requested by a signal, a checkpoint due by rank 0's clock), and the algorithm
applies the result. On sparse rows an algorithm may first name what its rows touch;
the engine gathers the union over the ranks, and the round's buffer then holds only
that (a compact gradient of the touched features). Around that the engine keeps what
every algorithm needs: the data plan, the non-finite guard, replica checks, the stall
watchdog, stops on signals, checkpoints and resume on any number of ranks, validation,
metrics and progress. Rank 0 writes; every rank ends with the same result.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..algorithms import make_algorithm
from ..algorithms.base import Batch
from ..config import model_loss, parse_interval
from ..data.standardize import scaled, standardization
from ..data.training import load_training
from ..devices import select_device
from ..devices.arrays import array_module
from ..errors import AgreedError, Preempted, TrainingFailed, UserError
from ..io.model_files import save_model
from ..models import build_model
from ..models.dense import is_sparse
from ..parallel import consistency
from ..parallel.comm import mpi_library
from ..parallel.threads import apply_threads, threads_per_rank
from ..parallel.watchdog import Watchdog
from . import resume
from .checkpoint import CheckpointState, model_description
from .checkpoint_folder import resolve_resume
from .metrics import finite_or_null, split_metrics
from .progress import Progress
from .rounds import NoStop, Period, RowSource, stop_signals, watching
from .run_folder import PREEMPTED_MARK, RunFolder, check_out_dir

# Trailing slots of the buffer that ride along in its Allreduce, so the ranks agree on
# what to do after each round without a collective of their own.
STOP, CHECKPOINT, CONTROL_SLOTS = 0, 1, 2


def _training_rows(x, dtype, scale, comm):
    """The rank's rows in the training dtype: dense ones standardized as asked; sparse
    ones (CSR) kept sparse. Every rank must hold the same kind."""
    sparse = is_sparse(x)
    comm.agreed(_same_kind, sparse, comm.allreduce_int(int(sparse)), comm.size)
    return scaled(x, dtype, scale, in_place=True)


def _same_kind(sparse, n_sparse, size):
    if 0 < n_sparse < size:
        raise UserError(f"the training rows are sparse on {n_sparse} of {size} ranks and "
                        f"dense on the others; give every rank rows of one kind")


class Engine:
    """Trains a model on data across the ranks of ``comm`` with ``cfg``'s algorithm.

    ``fit`` is collective: every rank calls it. With ``cfg.out`` set, rank 0 writes
    the model, the metrics, the checkpoints and the progress there; the result (final
    metrics) is the same on every rank, and so are ``model``, ``params`` (host),
    ``history`` and ``scale`` afterwards.

    What ``cfg`` would pick can be given instead: ``kernels`` (a kernel module),
    ``device`` (a ``devices.CpuDevice``-like object), ``data`` (a
    ``data.training.TrainingData``: the rank's rows, already read), ``model`` (any
    object with the interface of ``models.protocol``) and ``algorithm`` (a function
    ``(cfg, model, dev, params, n_train=...) -> algorithms.Algorithm``). ``process=True`` (the command line)
    lets the engine act for the whole process: set BLAS/Numba thread counts and catch
    SIGTERM/SIGUSR1; a library caller leaves both to its program.
    """

    def __init__(self, cfg, *, comm, kernels=None, device=None, data=None, model=None,
                 algorithm=None, process: bool = True):
        self.cfg, self.comm = cfg, comm
        self.kernels, self.device, self.data, self.model = kernels, device, data, model
        self.make_algorithm = algorithm or make_algorithm
        self.process = process
        self.folder = RunFolder(cfg.out) if cfg.out else None

    def fit(self) -> dict:
        cfg, comm = self.cfg, self.comm
        comm.agreed(cfg.validate, world_size=comm.size, files=self.data is None)
        if self.folder is not None:
            comm.agreed_on_root(check_out_dir, cfg.out)
            # Before anything in --out changes and before the data loads: a fresh run
            # over another run's checkpoints is refused, and so is a --resume that
            # finds none.
            comm.agreed_on_root(resolve_resume, cfg.resume, cfg.out)
            # Removed before this run can be stopped, so its own marker never is.
            self._write("the stop marker", self.folder.forget_stop)
        if self.process:
            apply_threads(threads_per_rank(cfg.threads, comm.ranks_sharing_cpus))
        # Stop signals are caught from here on. One that comes before this process's
        # first round (device set-up, data load, compilation) ends the job at once; one
        # after it stops the job after a round. The block ends after the model is saved.
        with self._stop_signals() as stop:
            self.stop = stop
            dev = self.dev = self.device or select_device(
                cfg.device, comm, cfg.dtype, kernels=self.kernels, exchange=cfg.gpu_exchange,
                tf32=cfg.tf32)
            try:
                if self.data is None:
                    self.data = load_training(cfg, comm)
                data = self.data
                resumed = resume.find_and_read(cfg, comm) if self.folder else None
                self._setup(data, resumed)
                with self._watchdog():
                    final = self._run(data, resumed)
                self.params = dev.to_host(self.algorithm.arrays()["params"]).copy()
                if self.folder is not None:
                    self._write("the model", lambda: save_model(
                        cfg.out, self.model, self.params,
                        self.meta(data, finite_or_null(final)), self.scale))
            except AgreedError:
                dev.close()  # every rank is here: a collective teardown (NCCL) is safe
                raise
            # Any other exception is one rank's crash: no teardown that could wait for
            # the others; the abort hook ends the job.
            dev.close()
        return final

    # --- setting up -------------------------------------------------------------------
    def _setup(self, data, resumed):
        cfg, comm, dev = self.cfg, self.comm, self.dev
        dtype = np.dtype(cfg.dtype)
        if self.model is None:
            self.model = build_model(cfg.model, cfg.task, data.n_features,
                                     data.n_classes, cfg.hidden, cfg.activation, model_loss(cfg))
        model = self.model
        host = np.zeros(model.size, dtype=dtype)
        if resumed is None:
            if comm.is_root:
                model.init(host, cfg.seed)
            comm.bcast_(host, what="initial parameters")  # rank 0's, bit for bit
        # On a GPU, memory running out on one rank stops every rank with one message.
        self.algorithm, self.buffer = dev.setup_step(
            "allocating the model's state", self._allocate, model, host, data.n_train, dtype)
        if resumed is not None:
            # Checked before anything from the checkpoint is used on this data.
            resume.check_and_restore(resumed, cfg, comm, model, data, self.algorithm, dev)
            self.scale = resumed.standardize  # as first computed: bit-identical batches
        else:
            self.scale = standardization(data.train.x, comm) if cfg.standardize else None
        self.x = _training_rows(data.train.x, dtype, self.scale, comm)
        data.train.x = None  # self.x replaces it; do not hold the rank's rows twice
        if is_sparse(self.x) and dev.xp is np:  # compiled before the clock starts
            from ..kernels.sparse import warm_up
            warm_up(dtype, self.x.indices.dtype)
        self.y = model.labels(data.train.y, dtype)
        # A GPU may keep the rows in its memory (--data-on-device); agreed, as it may fail.
        self.x, self.y = dev.setup_step("placing the training rows", dev.place_rows, self.x,
                                        self.y, cfg.data_on_device)

    def _allocate(self, model, host, n_train, dtype):
        algorithm = self.make_algorithm(self.cfg, model, self.dev, host, n_train=n_train)
        # The buffer carries CONTROL_SLOTS extra values after the algorithm's.
        return algorithm, self.dev.zeros(algorithm.buffer_size() + CONTROL_SLOTS, dtype)

    def _stop_signals(self):
        if not self.process:
            return contextlib.nullcontext(NoStop())
        return stop_signals(self)

    def _watchdog(self):
        if not self.cfg.stall_timeout or self.comm.size == 1:
            return contextlib.nullcontext()
        if not self.comm.threads_ok:
            if self.comm.is_root:
                print("mpi_dml: note: no stall watchdog: this MPI does not allow calls from "
                      "several threads (MPI_THREAD_MULTIPLE); on Cray MPICH set "
                      "MPICH_MAX_THREAD_SAFETY=multiple", file=sys.stderr)
            return contextlib.nullcontext()
        return watching(self.comm, Watchdog(self.comm, self.cfg.stall_timeout))

    # --- the loop ---------------------------------------------------------------------
    def _run(self, data, resumed) -> dict:
        cfg, comm, algo = self.cfg, self.comm, self.algorithm
        # Every rank holds the history, so the result is the same everywhere.
        self.history = comm.bcast_obj(list(resumed.state.history) if comm.is_root else None,
                                      what="history") if resumed else []
        self.step = resumed.step if resumed else 0
        carried = resumed.period if resumed else {"stats": None, "skipped": 0}
        self.last_checkpoint = time.monotonic()
        self.checkpoint_rule = parse_interval(cfg.checkpoint_every)
        self.progress = Progress(cfg.progress, algo.periods, getattr(algo, "steps", 0),
                                 enabled=comm.is_root, period_name=algo.period_name)
        self.stepping = False  # until the first round's Allreduce (StopRequest.steps_begin)
        ranks = comm.allgather({"rank": comm.rank, "host": comm.host, "pid": os.getpid()},
                               what="rank map")
        if self.folder is not None:
            self._write("ranks.json and metrics.jsonl", self.folder.start, ranks, self.history)
        self._rows = RowSource(self, data)
        period = Period(carried)
        record = self.history[-1] if self.history else {}
        while (request := algo.next_request()) is not None:
            flags = self._round(request, period)
            if algo.period_ended(request):
                record = self._finish_period(request.period, period, data)
                period = Period({"stats": None, "skipped": 0})
            self._maybe_checkpoint(flags, period)
        # No round left to run (a run resumed after the last one): a signal from here
        # on waits for a round that never comes, and the model is written as usual.
        self._steps_begin()
        consistency.check_replicas(comm, self.model, self._host_params(), self.step)
        record = comm.bcast_obj(record, what="final metrics")
        return {key: v for key, v in record.items() if key.startswith(("train_", "val_"))}

    def _round(self, request, period) -> np.ndarray:
        """One Allreduce: rows -> contribution -> reduction -> apply (or skip)."""
        comm, dev, algo = self.comm, self.dev, self.algorithm
        if comm.watchdog is not None:
            comm.watchdog.step = self.step + 1  # 1-based, as users count
        t0 = time.perf_counter()
        rows, count = self._rows.get(request)
        t1 = time.perf_counter()
        touched = getattr(algo, "touched", None)
        keys = touched(request, rows) if touched is not None else None
        if keys is None:
            n = algo.buffer_size()
        else:  # collective: the same union, so the same layout, on every rank
            n = algo.round_size(request, self._union(keys))
        reduced = self.buffer[:n + CONTROL_SLOTS]
        buf, control = reduced[:n], reduced[n:]
        t_union = time.perf_counter() - t1
        t1 += t_union
        # A device that can start the exchange during backward is told what is final.
        ready = dev.exchange_as_ready(reduced) if keys is None and getattr(
            algo, "streams_gradient", False) else None
        if ready is None:
            stats = algo.contribute(request, rows, buf)
        else:
            stats = algo.contribute(request, rows, buf, ready=ready)
        # Statistics left on the device come back with the step's summary below.
        stats_on_device = array_module(stats) is not np
        mine = self._control_flags()
        if mine is None:
            control.fill(0)  # no host-to-device copy on the usual round
        else:
            control[...] = dev.from_host(mine)
        t2 = time.perf_counter()
        with comm.watched("Allreduce(gradients)"):
            dev.allreduce_(reduced)
            # One read from the device decides the round: |buf|^2 (NaN or Inf when any
            # element is) and the summed control slots.
            seen = dev.to_host(consistency.step_summary(
                dev.xp, buf, control, stats if stats_on_device else None))
        if stats_on_device:
            seen, stats = seen[:1 + CONTROL_SLOTS], seen[1 + CONTROL_SLOTS:]
        t3 = time.perf_counter()
        if self._reduced_ok(seen[0], buf, request, rows):
            algo.apply(request, buf, count)
            period.add(stats)
        else:
            algo.skip(request)
            period.skipped += 1
        self.step += 1
        t4 = time.perf_counter()
        period.time(data=t1 - t_union - t0, compute=(t2 - t1) + (t4 - t3),
                    comm=t3 - t2 + t_union,
                    rows=rows[0].shape[0] if isinstance(rows, tuple) else 0)
        if isinstance(request, Batch):
            self.progress.step(request.epoch, request.step)
        if self.cfg.check_every and self.step % self.cfg.check_every == 0:
            consistency.check_replicas(comm, self.model, self._host_params(), self.step)
        return seen[1:]

    def _finish_period(self, index: int, period, data) -> dict:
        """Collective: the period's record, from statistics summed over every rank."""
        comm = self.comm
        totals = period.totals(comm)
        times = comm.allreduce_(period.times(), op="max", what="epoch times")
        seen = comm.allreduce_(np.array([period.rows], dtype=np.float64), what="rows seen")[0]
        record = self.algorithm.period_record(index, totals)
        record.update(self._validate(data))
        record.update({"samples_per_s": seen / times[0] if times[0] > 0 else 0.0,
                       "epoch_s": times[0], "compute_s": times[1], "comm_s": times[2],
                       "data_s": times[3]})
        if period.skipped:
            record["skipped_steps"] = period.skipped
        record = finite_or_null(record)
        self.history.append(record)
        if self.folder is not None:
            self._write("metrics.jsonl", self.folder.write_metrics, self.history)
        self.progress.period(index, record)
        return record

    def _union(self, keys) -> np.ndarray:
        """Collective: the sorted keys that any rank's rows touch this round."""
        if self.comm.size == 1:
            return keys
        from ..kernels.sparse import sorted_unique

        parts = self.comm.allgather(keys, what="touched features")
        keys = np.concatenate(parts)
        return sorted_unique(keys, n_cols=int(keys.max()) + 1 if keys.size else None)

    def _host_params(self) -> np.ndarray:
        return self.dev.to_host(self.algorithm.arrays()["params"])

    def _control_flags(self) -> np.ndarray | None:
        """This rank's control slots, or None when all are 0 (the usual round)."""
        if not self.stepping:
            self._steps_begin()
        stop = self.stop.requested is not None
        rule = self.checkpoint_rule
        due = (self.comm.is_root and rule is not None and rule[0] == "seconds"
               and time.monotonic() - self.last_checkpoint >= rule[1])
        if not (stop or due):
            return None
        flags = np.zeros(CONTROL_SLOTS, dtype=self.buffer.dtype)
        flags[STOP], flags[CHECKPOINT] = stop, due
        return flags

    def _steps_begin(self):
        """From here on a stop signal waits for a round; if one before the first round
        came first, this does not return (that stop is ending the job)."""
        if not self.stepping:
            self.stop.steps_begin()
            self.stepping = True

    def _reduced_ok(self, squared_norm, buf, request, rows) -> bool:
        """Collective in effect: every rank sees the same reduced buffer, so all take the
        same branch. A non-finite one skips the round or stops the job."""
        xp = self.dev.xp
        # An Inf norm with finite elements is only an overflow of the squares.
        if np.isfinite(squared_norm) or consistency.all_finite(xp, buf):
            return True
        # Rare path: redo this rank's own contribution (the state has not moved) to
        # name the ranks whose rows produced it.
        scratch = self.dev.zeros(buf.size, buf.dtype)
        self.algorithm.contribute(request, rows, scratch)
        mine = not consistency.all_finite(xp, scratch)
        culprits = self.comm.allgather((mine, self.comm.host), what="non-finite check")
        where = ", ".join(f"rank {r} on {h}" for r, (bad, h) in enumerate(culprits) if bad)
        where = where or "no single rank (the sum overflowed)"
        at = f"step {self.step + 1} ({request.where()})"
        if self.cfg.nonfinite == "skip" and self.algorithm.can_skip:
            if self.comm.is_root:
                print(f"mpi_dml: warning: non-finite gradient at {at} from {where}; "
                      f"step skipped", file=sys.stderr)
            return False
        hint = getattr(self.algorithm, "nonfinite_hint", "Lower --lr, check that rank's data, "
                       "or pass --nonfinite skip to drop such steps")
        raise TrainingFailed(f"non-finite gradient at {at} from {where}. {hint}.")

    # --- checkpoints and stops ----------------------------------------------------------
    def _maybe_checkpoint(self, flags, period):
        rule = self.checkpoint_rule
        due = bool(flags[CHECKPOINT]) or (
            rule is not None and rule[0] == "steps" and self.step % rule[1] == 0)
        stop = bool(flags[STOP])
        if not (due or stop):
            return
        if self.folder is None:  # trained from Python without a checkpoint folder
            if stop:
                raise Preempted(f"stopped on {self._signal_name()} after step {self.step}; "
                                f"no checkpoint folder was given, so nothing was saved")
            return
        carried = {"stats": period.totals(self.comm).tolist(), "skipped": period.skipped}
        path = resume.write(self.cfg, self.comm, Path(self.cfg.out) / "checkpoints",
                            lambda: self._state(carried))
        self.last_checkpoint = time.monotonic()
        if stop:
            self._write("the stop marker", self.folder.mark_stopped, str(path))
            raise Preempted(f"stopped on {self._signal_name()} after step {self.step}; checkpoint "
                            f"{path if path else 'written'}. Run again with --resume to "
                            f"continue.")

    def _write(self, what: str, write, *args):
        """Collective: rank 0 writes into --out; a failure there (a full disk, a folder
        where a file goes) stops every rank with one message instead of leaving the
        others waiting for rank 0 in the next collective."""
        def on_root():
            try:
                write(*args)
            except OSError as exc:
                raise UserError(f"cannot write {what} in {self.cfg.out}: "
                                f"{exc.strerror or exc}") from None

        self.comm.agreed_on_root(on_root)

    def _signal_name(self) -> str:
        return self.stop.requested or "SIGTERM or SIGUSR1 (sent to another rank)"

    def _state(self, carried) -> CheckpointState:
        """Rank 0's checkpoint: the algorithm's arrays copied to the host."""
        dev, cfg, algo = self.dev, self.cfg, self.algorithm
        return CheckpointState(
            arrays={name: dev.to_host(a).copy() for name, a in algo.arrays().items()},
            algorithm=algo.name, counters=algo.counters(), step=self.step, period=carried,
            history=list(self.history), standardize=self.scale, config=cfg.to_dict(),
            model=model_description(self.model, cfg.dtype),
            data=resume.data_description(self.data), world_size=self.comm.size)

    def stop_early(self, what: str) -> bool:
        """Signal watcher thread: a stop before this process's first round. No round can
        have run on any rank (this one never joins one now), so the last checkpoint, if
        any, is still where to resume: rank 0 says so, writes the marker and ends the
        job (True); another rank tells rank 0 (False)."""
        comm = self.comm
        if not comm.is_root:
            where = f"{what} (rank {comm.rank} on {comm.host})"
            if self.link is not None:
                self.link.tell_root(where)
                return False
            print(f"mpi_dml: stopped on {where} before the first step; nothing new to save. "
                  f"No {PREEMPTED_MARK} marker: without MPI_THREAD_MULTIPLE rank 0 cannot be "
                  f"told. Run the same command again to continue.", file=sys.stderr, flush=True)
            return True
        print(f"mpi_dml: stopped on {what} before the first step; nothing new to save (the "
              f"last checkpoint, if any, is still valid). Run the same command again to "
              f"continue.", file=sys.stderr, flush=True)
        try:
            if self.folder is not None:  # --out passed check_out_dir
                self.folder.mark_stopped("no new checkpoint: stopped before the first step")
        except OSError as exc:
            print(f"mpi_dml: warning: cannot write {self.folder.path / PREEMPTED_MARK}: "
                  f"{exc.strerror or exc}", file=sys.stderr, flush=True)
        return True

    # --- outputs ----------------------------------------------------------------------
    def _validate(self, data) -> dict:
        if data.val is None:
            return {}
        m = split_metrics(self.model, self.algorithm.arrays()["params"], data.val.x,
                          data.val.y, self.dev.kernels, self.comm, standardize=self.scale)
        return {f"val_{key}": v for key, v in m.items()}

    def meta(self, data, final) -> dict:
        """What model.json records besides the model itself: data, config, metrics."""
        import numba
        cfg = self.cfg
        return {
            "task": cfg.task,
            "feature_names": data.feature_names,
            "label_column": cfg.label_column,
            "classes": list(range(data.n_classes)) if data.n_classes else None,
            "n_train": data.n_train,
            "n_val": data.n_val,
            "metrics": final,
            "config": cfg.to_dict(),
            "world_size": self.comm.size,
            "device": self.dev.describe(),
            "versions": {"mpi_dml": __version__, "numpy": np.__version__,
                         "numba": numba.__version__, **{"mpi": mpi_library()}},
        }

