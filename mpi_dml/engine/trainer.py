"""The training loop: batch -> kernels -> one Allreduce -> fused optimizer step.

    $ python -m mpi_dml train --config examples/digits.toml
    $ mpiexec -n 4 python -m mpi_dml train --config examples/digits.toml

or from Python, with a communicator the caller owns:

    from mpi_dml.parallel.comm import Comm
    from mpi_dml.engine.trainer import Trainer
    metrics = Trainer(cfg, comm=Comm.world()).fit()
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..algorithms.optimizers import Optimizer
from ..algorithms.schedules import learning_rate
from ..config import parse_interval
from ..data import sharding
from ..data.standardize import scaled, standardization
from ..data.training import load_training
from ..devices import select_device
from ..errors import AgreedError, Preempted, TrainingFailed, UserError
from ..io.atomic import atomic_write
from ..io.model_files import save_model
from ..models import build_model, labels_for_loss
from ..parallel import consistency
from ..parallel.comm import mpi_library
from ..parallel.preemption import StopRequest, root_link
from ..parallel.threads import apply_threads, threads_per_rank
from ..parallel.watchdog import Watchdog
from . import resume
from .checkpoint import CheckpointState, model_description
from .checkpoint_folder import resolve_resume
from .metrics import finite_or_null, split_metrics
from .progress import Progress

# Trailing slots of the gradient buffer that ride along in its Allreduce, so the ranks
# agree on what to do after each step without a collective of their own.
STOP, CHECKPOINT, CONTROL_SLOTS = 0, 1, 2
# Written into --out, next to the checkpoint, when a signal stopped the run.
PREEMPTED_MARK = "PREEMPTED"


class Trainer:
    """Trains ``cfg``'s model on ``cfg``'s data across the ranks of ``comm``.

    ``fit`` is collective: every rank calls it. Rank 0 writes the model, the metrics,
    the checkpoints and the progress; the result (final metrics) is the same on every
    rank. ``kernels`` (a kernel module) or ``device`` (a ``device.CpuDevice``-like
    object) replace the ones ``cfg`` would pick.
    """

    def __init__(self, cfg, *, comm, kernels=None, device=None):
        self.cfg = cfg
        self.comm = comm
        self.kernels = kernels
        self.device = device

    def fit(self) -> dict:
        cfg, comm = self.cfg, self.comm
        comm.agreed(cfg.validate, world_size=comm.size)
        comm.agreed_on_root(check_out_dir, cfg.out)
        # Before anything in --out changes and before the data loads: a fresh run over
        # another run's checkpoints is refused, and so is a --resume that finds none.
        comm.agreed_on_root(resolve_resume, cfg.resume, cfg.out)
        if comm.is_root:
            # An earlier run's marker says nothing about this one. Removed before this
            # run can be stopped, so this run's own marker is never removed.
            (Path(cfg.out) / PREEMPTED_MARK).unlink(missing_ok=True)
        apply_threads(threads_per_rank(cfg.threads, comm.ranks_sharing_cpus))
        # Stop signals are caught from here on. One that comes before this process's
        # first step (device set-up, data load, compilation) ends the job at once; one
        # after it stops the job after a step. The block ends after the model is written.
        with root_link(comm) as link:
            self.link = link
            heard = link.heard if link is not None and comm.is_root else None
            with StopRequest(cfg.grace, comm.abort_from_thread, stop_early=self._stop_early,
                             heard=heard) as stop:
                self.stop = stop
                dev = self.dev = self.device or select_device(
                    cfg.device, comm, cfg.dtype, kernels=self.kernels, exchange=cfg.gpu_exchange)
                try:
                    data = self.data = load_training(cfg, comm)
                    resumed = resume.find_and_read(cfg, comm)
                    self._setup(data, resumed)
                    with self._watchdog():
                        final = self._train(data, resumed)
                    if comm.is_root:
                        save_model(cfg.out, self.model, dev.to_host(self.params),
                                   self._meta(data, finite_or_null(final)), self.scale)
                except AgreedError:
                    dev.close()  # every rank is here: a collective teardown (NCCL) is safe
                    raise
                # Any other exception is one rank's crash: no teardown that could wait for
                # the others; the abort hook ends the job.
                dev.close()
        return final

    # --- setting up -----------------------------------------------------------------
    def _setup(self, data, resumed):
        cfg, comm, dev = self.cfg, self.comm, self.dev
        dtype = np.dtype(cfg.dtype)
        model = build_model(cfg.model, cfg.task, len(data.feature_names), data.n_classes,
                            cfg.hidden, cfg.activation)
        self.model = model
        self.params = dev.zeros(model.size, dtype)
        # The gradient buffer carries CONTROL_SLOTS extra values after the gradient.
        self.grads = dev.zeros(model.size + CONTROL_SLOTS, dtype)
        self.opt = Optimizer(cfg, dev.from_host(model.decay_mask()), dev.kernels, xp=dev.xp)
        if resumed is not None:
            # Checked before anything from the checkpoint is used on this data.
            resume.check_and_restore(resumed, cfg, comm, model, data, self.params, self.opt, dev)
            self.scale = resumed.standardize  # as first computed: bit-identical batches
        else:
            host = np.zeros(model.size, dtype=dtype)
            if comm.is_root:
                model.init(host, cfg.seed)
            comm.bcast_(host, what="initial parameters")  # rank 0's, bit for bit
            self.params[...] = dev.from_host(host)
            self.scale = standardization(data.train.x, comm) if cfg.standardize else None
        self.x = scaled(data.train.x, dtype, self.scale)
        data.train.x = None  # self.x replaces it; do not hold the rank's rows twice
        self.y = labels_for_loss(model, data.train.y, dtype)

    def _watchdog(self):
        if not self.cfg.stall_timeout or self.comm.size == 1:
            return contextlib.nullcontext()
        if not self.comm.threads_ok:
            if self.comm.is_root:
                print("mpi_dml: note: no stall watchdog: this MPI does not allow calls from "
                      "several threads (MPI_THREAD_MULTIPLE); on Cray MPICH set "
                      "MPICH_MAX_THREAD_SAFETY=multiple", file=sys.stderr)
            return contextlib.nullcontext()
        return _watching(self.comm, Watchdog(self.comm, self.cfg.stall_timeout))

    # --- the loop -------------------------------------------------------------------
    def _train(self, data, resumed) -> dict:
        cfg, comm = self.cfg, self.comm
        steps = sharding.steps_per_epoch(data.n_train, cfg.batch_size)
        self.steps, self.total_steps = steps, steps * cfg.epochs
        self.history = list(resumed.state.history) if resumed and comm.is_root else []
        first_epoch, first_step = (resumed.epoch, resumed.step_in_epoch) if resumed else (0, 0)
        self.global_step = resumed.step if resumed else 0
        self.last_checkpoint = time.monotonic()
        self.checkpoint_rule = parse_interval(cfg.checkpoint_every)
        self.progress = Progress(cfg.progress, cfg.epochs, steps, enabled=comm.is_root)
        self.stepping = False  # until the first step's Allreduce (StopRequest.steps_begin)
        out = Path(cfg.out)
        # Launchers report a dead process by host and PID (mpiexec) or task number
        # (srun); ranks.json turns either into a rank.
        ranks = comm.allgather({"rank": comm.rank, "host": comm.host, "pid": os.getpid()},
                               what="rank map")
        if comm.is_root:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / "ranks.json", (json.dumps(ranks, indent=1) + "\n").encode())
            self._write_metrics()
        record = self.history[-1] if self.history else {}
        for epoch in range(first_epoch, cfg.epochs):
            carried = resumed.epoch_sums if resumed and epoch == first_epoch else {}
            record = self._epoch(data, epoch, first_step if epoch == first_epoch else 0, carried)
            record.update(self._validate(data))
            if not np.isfinite(record["train_loss"]):
                # The loss is reduced over all ranks, so every rank stops here together.
                raise TrainingFailed(f"training diverged in epoch {epoch + 1}: the training "
                                     f"loss is {record['train_loss']}; lower --lr")
            record = finite_or_null(record)
            self.history.append(record)
            if comm.is_root:
                self._write_metrics()
            self.progress.epoch(record)
        # No step left to run (a run resumed after the last one): a signal from here on
        # waits for a step that never comes, and the model is written as usual.
        self._steps_begin()
        consistency.check_replicas(comm, self.model, self.dev.to_host(self.params),
                                   self.global_step)
        record = comm.bcast_obj(record, what="final metrics")
        return {key: v for key, v in record.items() if key.startswith(("train_", "val_"))}

    def _epoch(self, data, epoch, first, carried) -> dict:
        cfg, comm, dev = self.cfg, self.comm, self.dev
        model, params, grads, k = self.model, self.params, self.grads, dev.kernels
        n = model.size
        g, control = grads[:n], grads[n:]
        plan = sharding.EpochPlan(data.shard_sizes, data.local_shards, seed=cfg.seed,
                                  epoch=epoch, batch_size=cfg.batch_size)
        # Loss, correct rows and rows of the steps used (not skipped): this rank's, over
        # the steps run in this process.
        sums = np.zeros(3)
        skipped = int(carried.get("skipped", 0))  # the same on every rank
        if "rows" not in carried:
            # Nothing carried, or a checkpoint written before rows were counted, which
            # counted every row before it (skipped steps' too).
            carried = {**carried, "rows": min(first * cfg.batch_size, data.n_train)}
        t_data = t_compute = t_comm = 0.0
        start = time.perf_counter()
        batches = dev.batches(self.x, self.y, plan, first, self.steps)
        for step in range(first, self.steps):
            if comm.watchdog is not None:
                comm.watchdog.step = self.global_step + 1  # 1-based, as users count
            t0 = time.perf_counter()
            xb, yb = next(batches)
            t1 = time.perf_counter()
            loss, hits = model.loss_grad(params, g, xb, yb, k)
            mine = self._control_flags()
            if mine is None:
                control.fill(0)  # no host-to-device copy on the usual step
            else:
                control[...] = dev.from_host(mine)
            t2 = time.perf_counter()
            with comm.watched("Allreduce(gradients)"):
                dev.allreduce_(grads)
                # One read from the device decides the step: |g|^2 (NaN or Inf when
                # any element is) and the summed control slots.
                seen = dev.to_host(consistency.step_summary(dev.xp, g, control))
            flags = seen[1:]
            t3 = time.perf_counter()
            if self._gradient_ok(seen[0], g, xb, yb, epoch, step):
                g *= 1.0 / plan.global_count(step)
                self.opt.step(params, g, self._lr(self.global_step))
                sums += (loss, hits, xb.shape[0])
            else:
                skipped += 1
            self.global_step += 1
            t4 = time.perf_counter()
            t_data += t1 - t0
            t_compute += (t2 - t1) + (t4 - t3)
            t_comm += t3 - t2
            self.progress.step(epoch, step)
            if cfg.check_every and self.global_step % cfg.check_every == 0:
                consistency.check_replicas(comm, model, dev.to_host(params), self.global_step)
            self._maybe_checkpoint(flags, epoch, step + 1, sums, carried, skipped)
        wall = time.perf_counter() - start
        total = self._epoch_sums(sums, carried)
        times = comm.allreduce_(np.array([wall, t_compute, t_comm, t_data]), op="max",
                                what="epoch times")
        # Averages over the rows of the steps used; none used (every step skipped) gives
        # NaN, which stops the run as diverged.
        used = total["rows"]
        record = {"epoch": epoch, "train_loss": total["loss_sum"] / used if used else math.nan}
        if model.is_classifier:
            record["train_accuracy"] = total["correct"] / used if used else math.nan
        done = self.steps - first
        seen = data.n_train * done / max(self.steps, 1)
        record.update({"lr": self._lr((epoch + 1) * self.steps - 1),
                       "samples_per_s": seen / times[0] if times[0] > 0 else 0.0,
                       "epoch_s": times[0], "compute_s": times[1], "comm_s": times[2],
                       "data_s": times[3]})
        if skipped:
            record["skipped_steps"] = skipped
        return record

    def _lr(self, step: int) -> float:
        c = self.cfg
        return learning_rate(step, lr=c.lr, schedule=c.schedule, total_steps=self.total_steps,
                             steps_per_epoch=self.steps, warmup_steps=c.warmup_steps,
                             step_epochs=c.step_epochs, gamma=c.gamma)

    def _control_flags(self) -> np.ndarray | None:
        """This rank's control slots, or None when all are 0 (the usual step)."""
        if not self.stepping:
            self._steps_begin()
        stop = self.stop.requested is not None
        rule = self.checkpoint_rule
        due = (self.comm.is_root and rule is not None and rule[0] == "seconds"
               and time.monotonic() - self.last_checkpoint >= rule[1])
        if not (stop or due):
            return None
        flags = np.zeros(CONTROL_SLOTS, dtype=self.grads.dtype)
        flags[STOP], flags[CHECKPOINT] = stop, due
        return flags

    def _steps_begin(self):
        """From here on a stop signal waits for a step; if one before the first step
        came first, this does not return (that stop is ending the job)."""
        if not self.stepping:
            self.stop.steps_begin()
            self.stepping = True

    def _epoch_sums(self, sums, carried) -> dict:
        """Collective: loss, correct rows and rows used of the epoch so far over every
        rank, plus what a resumed checkpoint carried from before it."""
        total = self.comm.allreduce_(sums.copy(), what="epoch sums")
        return {"loss_sum": float(total[0]) + carried.get("loss_sum", 0.0),
                "correct": float(total[1]) + carried.get("correct", 0.0),
                "rows": int(total[2]) + int(carried["rows"])}

    def _gradient_ok(self, squared_norm, g, xb, yb, epoch, step) -> bool:
        """Collective in effect: every rank sees the same summed gradient, so all take
        the same branch. A non-finite one skips the step or stops the job."""
        xp = self.dev.xp
        # An Inf norm with finite elements is only an overflow of the squares.
        if np.isfinite(squared_norm) or consistency.all_finite(xp, g):
            return True
        # Rare path: redo this rank's own gradient (the parameters have not moved) to
        # name the ranks whose batch produced it.
        scratch = self.dev.zeros(g.size, g.dtype)
        self.model.loss_grad(self.params, scratch, xb, yb, self.dev.kernels)
        mine = not consistency.all_finite(xp, scratch)
        culprits = self.comm.allgather((mine, self.comm.host), what="non-finite check")
        where = ", ".join(f"rank {r} on {h}" for r, (bad, h) in enumerate(culprits) if bad)
        where = where or "no single rank (the sum overflowed)"
        at = f"step {self.global_step + 1} (epoch {epoch + 1}, batch {step + 1})"
        if self.cfg.nonfinite == "skip":
            if self.comm.is_root:
                print(f"mpi_dml: warning: non-finite gradient at {at} from {where}; "
                      f"step skipped", file=sys.stderr)
            return False
        raise TrainingFailed(f"non-finite gradient at {at} from {where}. Lower --lr, check "
                             f"that rank's data, or pass --nonfinite skip to drop such steps.")

    def _write_metrics(self):
        """Rank 0: the whole history into metrics.jsonl, by atomic rename, so a reader
        never sees part of a line and a symlink there is replaced, not followed."""
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.history)
        atomic_write(Path(self.cfg.out) / "metrics.jsonl", text.encode())

    # --- stopping -------------------------------------------------------------------
    def _stop_early(self, what: str) -> bool:
        """Signal watcher thread: a stop before this process's first step. No step can
        have run on any rank (this one never joins one now), so the last checkpoint, if
        any, is still where to resume: rank 0 says so, writes the marker and ends the
        job (True); another rank tells rank 0 (False)."""
        comm, out = self.comm, Path(self.cfg.out)
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
            out.mkdir(parents=True, exist_ok=True)  # --out passed check_out_dir
            atomic_write(out / PREEMPTED_MARK,
                         b"no new checkpoint: stopped before the first step\n")
        except OSError as exc:
            print(f"mpi_dml: warning: cannot write {out / PREEMPTED_MARK}: "
                  f"{exc.strerror or exc}", file=sys.stderr, flush=True)
        return True

    # --- checkpoints ----------------------------------------------------------------
    def _maybe_checkpoint(self, flags, epoch, next_step, sums, carried, skipped):
        rule = self.checkpoint_rule
        due = bool(flags[CHECKPOINT]) or (
            rule is not None and rule[0] == "steps" and self.global_step % rule[1] == 0)
        stop = bool(flags[STOP])
        if not (due or stop):
            return
        # After an epoch's last step the position is (epoch, steps): a run resumed there
        # runs no step of that epoch but still validates it and writes its record.
        epoch_sums = {**self._epoch_sums(sums, carried), "skipped": skipped}
        path = resume.write(self.cfg, self.comm, Path(self.cfg.out) / "checkpoints",
                            lambda: self._state(epoch, next_step, epoch_sums))
        self.last_checkpoint = time.monotonic()
        if stop:
            if self.comm.is_root:
                # For job scripts: srun may report a rank killed while exiting rather
                # than 75; this file says the stop was clean and resumable.
                atomic_write(Path(self.cfg.out) / PREEMPTED_MARK, f"{path}\n".encode())
            signal_name = self.stop.requested or "SIGTERM or SIGUSR1 (sent to another rank)"
            raise Preempted(f"stopped on {signal_name} after step {self.global_step}; "
                            f"checkpoint {path if path else 'written'}. Run again with "
                            f"--resume to continue.")

    def _state(self, epoch, next_step, epoch_sums) -> CheckpointState:
        """Rank 0's checkpoint: buffers copied to the host, position in global terms."""
        dev, cfg = self.dev, self.cfg
        return CheckpointState(
            params=dev.to_host(self.params).copy(),
            optimizer={name: dev.to_host(buf).copy() for name, buf in self.opt.state.items()},
            optimizer_steps=self.opt.step_count, step=self.global_step, epoch=epoch,
            step_in_epoch=next_step, epoch_sums=epoch_sums, history=list(self.history),
            standardize=self.scale, config=cfg.to_dict(),
            model=model_description(self.model, cfg.dtype),
            data=resume.data_description(self.data), world_size=self.comm.size)

    def _validate(self, data) -> dict:
        if data.val is None:
            return {}
        m = split_metrics(self.model, self.params, data.val.x, data.val.y, self.dev.kernels,
                          self.comm, standardize=self.scale)
        return {f"val_{key}": v for key, v in m.items()}

    def _meta(self, data, final) -> dict:
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


@contextlib.contextmanager
def _watching(comm, watchdog):
    """Run ``watchdog`` and let ``comm`` report to it; collective on entry and exit."""
    watchdog.start()
    comm.watchdog = watchdog
    try:
        yield watchdog
    except AgreedError:
        comm.watchdog = None
        watchdog.stop()  # every rank raised it at the same point: still collective
        raise
    except BaseException:
        comm.watchdog = None  # one rank's crash: the abort hook ends the job
        raise
    comm.watchdog = None
    watchdog.stop()


def check_out_dir(path):
    """``--out`` must be a folder, or a path where one can be made."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {path} exists and is not a folder")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if not out.exists() and (parent is None or not parent.is_dir()
                             or not os.access(parent, os.W_OK | os.X_OK)):
        raise UserError(f"--out {path} cannot be created: {parent} is not a writable folder")

