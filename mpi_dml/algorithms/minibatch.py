"""Minibatch gradient descent: one global batch per round, one fused optimizer step.

    contribute: the batch's summed loss gradient (model.loss_grad), into the buffer
    apply:      SGD, Adam or AdamW on gradient / rows in the global batch (the division
                inside the update's one pass), with the learning rate of the schedule

Batches come from the engine's data plan (``Batch``), which fixes every batch's rows
from the seed, the epoch and the batch size alone, so the same rows meet the same
parameters on any number of ranks. A period is an epoch. With ``tol`` > 0, training
stops early once the epoch's training loss has improved by less than ``tol`` on the best
so far for ``n_iter_no_change`` epochs in a row (scikit-learn's rule for its SGD and
MLP estimators); the loss is summed over every rank, so every rank stops together.

On sparse rows a round's buffer holds only the first-layer rows of the features the
global batch touches (``touched`` and ``round_size`` in ``base``), and the step costs
what the batch touched (``sparse_update``), unless most features were touched: the
round is then dense as usual.
"""
from __future__ import annotations

import math

import numpy as np

from ..data.sharding import steps_per_epoch
from ..errors import TrainingFailed
from ..models.dense import is_sparse
from .base import Algorithm, Batch
from .optimizers import Optimizer
from .schedules import learning_rate
from .sparse_update import SparseUpdate

# Per-rank statistics of a round: loss sum, correctly classified rows, rows.
LOSS, CORRECT, ROWS = 0, 1, 2


class Minibatch(Algorithm):
    """Trains ``model`` from ``params`` (host, the same on every rank) with the solver
    settings ``solver`` (``config.SolverSettings``) on ``n_train`` rows."""

    name = "minibatch"
    period_name = "epoch"
    can_skip = True
    streams_gradient = True

    def __init__(self, solver, model, dev, params, *, n_train: int):
        self.solver, self.model, self.dev = solver, model, dev
        self.params = dev.from_host(np.array(params))  # owned: never a caller's array
        self.opt = Optimizer(solver, dev.from_host(model.decay_mask()), dev.kernels,
                             xp=dev.xp, dtype=params.dtype)
        self.steps = steps_per_epoch(n_train, solver.batch_size)
        self.total_steps = self.steps * solver.epochs
        self.periods = solver.epochs
        self.epoch = self.step = self.global_step = 0
        self.best_loss, self.stale = math.inf, 0  # early stopping (tol)
        self.stopped = False
        # Where the model can leave a step's sums: on a GPU they stay there until the
        # engine reads them with the step's summary, the step's one read.
        self._stats = (dev.zeros(3, np.float64) if getattr(model, "keeps_totals", False)
                       else None)
        # Sparse rows: the first-layer rows this round's buffer holds (None: dense).
        self._sparse = SparseUpdate(model, self.opt, self.params, solver, dev.xp) if hasattr(
            model, "compact_size") else None
        self._rows = None

    # --- state ------------------------------------------------------------------------
    def buffer_size(self) -> int:
        return self.model.size

    def arrays(self) -> dict:
        if self._sparse is not None:
            self._sparse.catch_up()  # rows left behind by lazy steps: read as the dense update
        return {"params": self.params, **self.opt.state}

    def counters(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step, "step": self.global_step,
                "optimizer_steps": self.opt.step_count, "stopped": int(self.stopped),
                "best_loss": self.best_loss, "epochs_without_improvement": self.stale}

    def restore(self, arrays: dict, counters: dict):
        for name, target in self.arrays().items():
            target[...] = self.dev.from_host(arrays[name])
        self.epoch, self.step = counters["epoch"], counters["step_in_epoch"]
        self.global_step = counters["step"]
        self.opt.step_count = counters["optimizer_steps"]
        self.stopped = bool(counters["stopped"])
        best = counters["best_loss"]  # infinity is written as null
        self.best_loss = math.inf if best is None else best
        self.stale = counters["epochs_without_improvement"]
        if self._sparse is not None:
            self._sparse.reset()

    # --- rounds -----------------------------------------------------------------------
    def next_request(self):
        if self.epoch >= self.solver.epochs or self.stopped:
            return None
        return Batch(self.epoch, self.step, self.steps, self.solver.batch_size,
                     self.solver.seed)

    def touched(self, request, rows):
        """The features this rank's sparse rows use (host, sorted), or None: dense rows,
        or a model without a compact layout."""
        xb = rows[0]
        if self._sparse is None or not is_sparse(xb):
            return None
        from ..kernels.sparse import touched  # loads Numba: only for sparse rows
        return np.asarray(self.dev.to_host(touched(xb, self.dev.xp)), dtype=np.int64)

    def round_size(self, request, union) -> int:
        # Compact only where it saves most of the exchange and of the update: a batch
        # that touches over half the features is cheaper sent dense (no remapping).
        if 2 * len(union) > self.model.n_features:
            self._rows = None
            self._sparse.catch_up()  # the forward pass may read any row
            return self.buffer_size()
        self._rows = self.dev.from_host(union)
        self._sparse.catch_up_rows(self._rows)  # the rows the forward pass reads
        return self.model.compact_size(len(union))

    def contribute(self, request, rows, buffer, ready=None):
        xb, yb = rows
        compact = {} if self._rows is None else {"first_rows": self._rows}
        if self._stats is not None:
            more = {"ready": ready} if ready and getattr(self.model, "streams_gradient",
                                                         False) else {}
            self.model.loss_grad(self.params, buffer, xb, yb, self.dev.kernels,
                                 totals=self._stats, **more, **compact)
            return self._stats
        loss, hits = self.model.loss_grad(self.params, buffer, xb, yb, self.dev.kernels,
                                          **compact)
        return np.array([loss, hits, xb.shape[0]], dtype=np.float64)

    def apply(self, request, buffer, count: int):
        # Divided by the rows inside the update: no pass over the buffer of its own.
        lr = self.lr(self.global_step)
        if self._rows is not None:
            self._sparse.step(buffer, self._rows, lr, 1.0 / count)
        elif self._sparse is not None:
            self._sparse.dense_step(buffer, lr, 1.0 / count)
        else:
            self.opt.step(self.params, buffer, lr, 1.0 / count)
        self._rows = None
        self._advance()

    def skip(self, request):
        self._rows = None
        self._advance()

    def _advance(self):
        self.global_step += 1
        self.step += 1
        if self.step == self.steps:
            self.epoch, self.step = self.epoch + 1, 0
            if self._sparse is not None:
                self._sparse.catch_up()  # keeps the lazy history an epoch long at most

    # --- records ----------------------------------------------------------------------
    def lr(self, step: int) -> float:
        s = self.solver
        return learning_rate(step, lr=s.lr, schedule=s.schedule, total_steps=self.total_steps,
                             steps_per_epoch=self.steps, warmup_steps=s.warmup_steps,
                             step_epochs=s.step_epochs, gamma=s.gamma)

    def period_record(self, period: int, totals) -> dict:
        """Loss and accuracy averaged over the rows of the steps used (a skipped step's
        rows are not); none used (every step skipped) is NaN, as is a diverged loss,
        and either stops the run on every rank."""
        # No statistics at all when every step of the epoch was skipped.
        used = totals[ROWS] if len(totals) > ROWS else 0
        record = {"epoch": period, "train_loss": totals[LOSS] / used if used else math.nan}
        if self.model.is_classifier:
            record["train_accuracy"] = totals[CORRECT] / used if used else math.nan
        if not math.isfinite(record["train_loss"]):
            raise TrainingFailed(f"training diverged in epoch {period + 1}: the training "
                                 f"loss is {record['train_loss']}; lower --lr")
        record["lr"] = self.lr((period + 1) * self.steps - 1)
        self._early_stop(record["train_loss"])
        return record

    def _early_stop(self, loss: float):
        if self.solver.tol <= 0:
            return
        if loss > self.best_loss - self.solver.tol:
            self.stale += 1
        else:
            self.stale = 0
        self.best_loss = min(self.best_loss, loss)
        self.stopped = self.stale >= self.solver.n_iter_no_change
