"""Full-batch L-BFGS (OWL-QN with an L1 term): convex models solved to the optimum.

    $ mpiexec -n 4 python -m mpi_dml train --data d.csv --label-column y --out runs/a \\
          --model logistic --optimizer lbfgs --weight-decay 1e-4 --dtype float64

The objective is the mean loss over every rank's training rows, plus
``weight_decay`` / 2 * ||W||^2 + ``l1`` * ||W||_1 over the weights (``decay_mask``;
biases are not regularized). scikit-learn's ``C`` is 1 / (``weight_decay`` * n).

Each round is one ``FullPass``: every rank evaluates the model at one point on all of
its rows, and one Allreduce carries the loss sum, the correct-row count and the
gradient sum together. Sums are divided by the global row count only after the
reduction, so every rank holds the same objective and gradient, and the iterates are
the same on any number of ranks (to the rounding of the sums' order). An iteration is
a line search (``line_search``) of one or more rounds:

* without ``l1``: L-BFGS with ``history`` pairs and a line search that satisfies the
  strong Wolfe conditions, starting at step 1 (at unit distance the first time);
* with ``l1`` > 0: OWL-QN (Andrew and Gao, 2007): the quasi-Newton direction of the
  pseudo-gradient, kept in its orthant, and a backtracking search whose points are
  projected back onto that orthant, so weights reach exact zeros.

It stops once the (pseudo-)gradient's norm has fallen to ``tol`` times its start, or
an iteration changed the objective by at most ``tol`` of its size, or after
``max_iter`` iterations, or when no step lowers the objective even along the steepest
descent direction (the history is dropped first; the point is then at the rounding
level of the dtype). The last metrics line says which
(``"stop"``). An MLP is allowed too: its objective is not convex, so the point reached
is a local minimum that depends on the initial weights.

``warm_start_epochs`` > 0 first runs that many epochs of plain minibatch SGD (``lr``,
``batch_size``) from the initial weights, Vowpal Wabbit's recipe for very large data,
then L-BFGS from where SGD ended. The state (iterate, gradient, direction, history
pairs, counters and the line search's scalars) is all a checkpoint needs to continue
at any round, inside a line search too, on any number of ranks.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..devices.arrays import array_module
from ..errors import TrainingFailed
from ..models.dense import is_sparse
from .base import Algorithm, Batch, FullPass
from .line_search import ACCEPT, FAILED, Backtracking, StrongWolfe, rounding_slack
from .minibatch import Minibatch
from .quasi_newton import constrain, dot, norm, orthant, project, pseudo_gradient, two_loop

# Slots of the reduced buffer before the gradient.
LOSS, CORRECT, GRAD = 0, 1, 2
# Why the solver stopped: the code a checkpoint stores -> the name metrics.jsonl shows.
STOPS = {1: "gradient", 2: "objective", 3: "max_iter", 4: "no_decrease"}
# Activations (and, for host rows on a GPU, input values) a full pass may hold at once;
# more rows are taken in chunks of at least MIN_CHUNK rows.
PASS_VALUES, MIN_CHUNK = 1 << 24, 4096


class LBFGS(Algorithm):
    """L-BFGS / OWL-QN from ``params`` (host, the same on every rank) with the solver
    settings ``solver`` (``config.SolverSettings``) on ``n_train`` rows."""

    name = "lbfgs"
    period_name = "iteration"
    # A trial point whose objective overflows is not a failure of the run: with
    # --nonfinite skip the line search takes it as +inf and shrinks the step.
    can_skip = True
    nonfinite_hint = ("Check that rank's data, or pass --nonfinite skip to let the line "
                      "search step back from such points")

    def __init__(self, solver, model, dev, params, *, n_train: int):
        self.solver, self.model, self.dev, self.n_train = solver, model, dev, n_train
        self.wd, self.l1 = float(solver.weight_decay), float(solver.l1)
        self.tol, self.max_iter, self.memory = float(solver.tol), solver.max_iter, solver.history
        self.warm = None
        if solver.warm_start_epochs:
            sgd = dataclasses.replace(solver, optimizer="sgd", epochs=solver.warm_start_epochs,
                                      momentum=0.0, nesterov=False, tol=0.0,
                                      schedule="constant", warmup_steps=0)
            self.warm = Minibatch(sgd, model, dev, params, n_train=n_train)
            self.params = self.warm.params  # one iterate, moved by SGD and then by L-BFGS
        else:
            self.params = dev.from_host(np.array(params))
        self.periods = self.max_iter  # iterations; warm-start epochs are counted apart
        n, dtype = model.size, params.dtype
        self.dtype = np.dtype(dtype)
        self.grad = dev.zeros(n, dtype)       # the smooth part's gradient at params
        self.direction = dev.zeros(n, dtype)
        self.s = dev.zeros((self.memory, n), dtype)  # steps, a ring of pairs
        self.y = dev.zeros((self.memory, n), dtype)  # gradient changes
        self.mask = dev.from_host(model.decay_mask().astype(dtype))
        self.trial = dev.zeros(n, dtype)      # the point a line search evaluates
        # Scratch vectors: the weights' part of a point, a new (s, y) pair, a product.
        self._work, self._s_new, self._y_new = (dev.zeros(n, dtype) for _ in range(3))
        self._scratch = None                  # a chunk's gradient, for chunked passes
        self._pg = None                       # pseudo-gradient at params (cached)
        self.iteration = self.index = self.evaluations = 0
        self.pairs, self.newest = 0, self.memory - 1
        self.started = self.done = self.stop = self.warm_done = 0
        self.objective = self.loss = self.accuracy = 0.0
        self.grad_norm = self.grad_norm0 = self.accepted_step = 0.0
        self.search = None
        self._ended = False
        self.rounds = 0    # rounds of the iteration that just ended (its record's)
        self._last = None  # the kind of the last round applied: Batch or FullPass

    @property
    def steps(self) -> int:  # batches per warm-start epoch, for progress
        return self.warm.steps if self.warm is not None else 0

    # --- state ------------------------------------------------------------------------
    def buffer_size(self) -> int:
        return GRAD + self.model.size

    def arrays(self) -> dict:
        arrays = {"params": self.params, "grad": self.grad, "direction": self.direction,
                  "s": self.s, "y": self.y}
        if self.warm is not None:
            warm = self.warm.arrays()  # SGD's lazy rows caught up
            arrays.update({f"warm.{k}": v for k, v in warm.items() if k != "params"})
        return arrays

    def counters(self) -> dict:
        state = {"iteration": self.iteration, "evaluation": self.index,
                 "evaluations": self.evaluations, "pairs": self.pairs,
                 "newest": self.newest, "started": self.started, "done": self.done,
                 "stop": self.stop, "warm_done": self.warm_done,
                 "objective": self.objective, "loss": self.loss, "accuracy": self.accuracy,
                 "grad_norm": self.grad_norm, "grad_norm0": self.grad_norm0,
                 "accepted_step": self.accepted_step}
        search = self.search.state() if self.search is not None else dict.fromkeys(
            StrongWolfe.FIELDS, 0.0)
        state.update({f"search.{k}": v for k, v in search.items()})
        if self.warm is not None:
            state.update({f"warm.{k}": v for k, v in self.warm.counters().items()})
        return state

    def restore(self, arrays: dict, counters: dict):
        if self.warm is not None:
            self.warm.restore(
                {"params": arrays["params"],
                 **{k[5:]: v for k, v in arrays.items() if k.startswith("warm.")}},
                {k[5:]: v for k, v in counters.items() if k.startswith("warm.")})
        for name in ("params", "grad", "direction", "s", "y"):
            getattr(self, name)[...] = self.dev.from_host(arrays[name])
        for name in ("iteration", "evaluations", "pairs", "newest", "started", "done",
                     "stop", "warm_done"):
            setattr(self, name, int(counters[name]))
        self.index = int(counters["evaluation"])
        for name in ("objective", "loss", "accuracy", "grad_norm", "grad_norm0",
                     "accepted_step"):
            setattr(self, name, float(counters[name]))
        self._pg = None
        self.search = None
        if self.started and not self.done:
            kind = Backtracking if self.l1 else StrongWolfe
            self.search = kind.restore({k[7:]: v for k, v in counters.items()
                                        if k.startswith("search.")})

    # --- rounds -----------------------------------------------------------------------
    def next_request(self):
        if self.warm is not None and not self.warm_done:
            request = self.warm.next_request()
            if request is not None:
                return request
            self.warm.arrays()  # the lazy rows of sparse SGD, caught up before L-BFGS
            self.warm_done = 1
        if self.done:
            return None
        # Whether this evaluation ends the iteration is known only once the line
        # search has seen its objective (period_ended).
        return FullPass(self.iteration, self.index, ends_period=False)

    def touched(self, request, rows):
        return self.warm.touched(request, rows) if isinstance(request, Batch) else None

    def round_size(self, request, union) -> int:
        return self.warm.round_size(request, union)  # only warm-start batches touch

    def contribute(self, request, rows, buffer):
        if isinstance(request, Batch):
            return self.warm.contribute(request, rows, buffer)
        x, y = rows
        loss, correct = self._full_pass(self._point(), buffer[GRAD:], x, y)
        buffer[LOSS], buffer[CORRECT] = loss, correct
        return np.array([x.shape[0]], dtype=np.float64)

    def _full_pass(self, point, grad, x, y):
        """The loss sum, correct rows and gradient sum over all of the rank's rows, in
        chunks when one pass at once would hold too many activations, or move too many
        host rows to a GPU at once."""
        model, dev = self.model, self.dev
        rows = x.shape[0]
        width = sum(layer.n_out for layer in getattr(model, "layers", ())) or 1
        # On the CPU the rows are used where they are (never copied once per pass).
        move = dev.from_host if dev.xp is not np else (lambda a: a)
        if dev.xp is not np and array_module(x.data if is_sparse(x) else x) is np:
            # Host rows for a GPU: each chunk crosses on its own.
            per_row = x.nnz // max(rows, 1) + 1 if is_sparse(x) else x.shape[1]
            width = max(width, per_row)
        chunk = max(MIN_CHUNK, PASS_VALUES // width)
        if rows <= chunk:
            loss, correct = model.loss_grad(point, grad, move(x), move(y), dev.kernels)
            return float(loss), float(correct)
        if self._scratch is None:
            self._scratch = dev.zeros(grad.size, grad.dtype)
        grad.fill(0)
        loss = correct = 0.0
        for start in range(0, rows, chunk):
            part = slice(start, min(start + chunk, rows))
            a, b = model.loss_grad(point, self._scratch, move(x[part]), move(y[part]),
                                   dev.kernels)
            grad += self._scratch
            loss, correct = loss + float(a), correct + float(b)
        return loss, correct

    def period_ended(self, request) -> bool:
        if isinstance(request, Batch):
            return self.warm.period_ended(request)
        return self._ended

    def apply(self, request, buffer, count: int):
        self._last = type(request)
        if isinstance(request, Batch):
            return self.warm.apply(request, buffer, count)
        self._ended = False
        xp = array_module(self.params)
        scale = 1.0 / count
        grad = buffer[GRAD:]
        grad *= scale
        point = self._point()
        loss = float(buffer[LOSS]) * scale
        accuracy = float(buffer[CORRECT]) * scale
        f = loss
        if self.wd or self.l1:
            weights = xp.multiply(point, self.mask, out=self._work)
            if self.l1:
                f += self.l1 * float(xp.abs(weights).sum())
            if self.wd:
                f += 0.5 * self.wd * dot(weights, weights)
                weights *= self.wd
                grad += weights
        self.index += 1
        self.evaluations += 1
        if not self.started:
            self._start(f, loss, accuracy, grad)
            return
        if self.l1:
            status = self.search.observe(f, dot(self._pseudo(), point - self.params))
        else:
            status = self.search.observe(f, dot(grad, self.direction))
        if status == ACCEPT:
            self._accept(point, f, loss, accuracy, grad)
        elif status == FAILED:
            self._failed()

    def skip(self, request):
        """A round whose reduced sums were not finite (``--nonfinite skip``)."""
        self._last = type(request)
        if isinstance(request, Batch):
            return self.warm.skip(request)
        if not self.started:
            raise TrainingFailed("the objective is not finite at the initial parameters: "
                                 "check the data for NaN or Inf values")
        self.index += 1
        self.evaluations += 1
        self._ended = False
        if self.search.observe(math.inf, math.nan) == FAILED:
            self._failed()

    # --- the iteration ----------------------------------------------------------------
    def _point(self):
        """The parameters this round evaluates: params, or the line search's trial."""
        if not self.started or self.search is None:
            return self.params
        xp = array_module(self.params)
        xp.multiply(self.direction, self.search.step, out=self.trial)
        self.trial += self.params
        if self.l1:
            project(self.trial, orthant(self.params, self._pseudo(), self.mask), self.mask,
                    out=self.trial)
        return self.trial

    def _pseudo(self):
        """The pseudo-gradient at params: the gradient itself without an L1 term."""
        if not self.l1:
            return self.grad
        if self._pg is None:
            self._pg = pseudo_gradient(self.params, self.grad, self.l1, self.mask)
        return self._pg

    def _start(self, f, loss, accuracy, grad):
        """The first round: the objective and gradient at the initial parameters."""
        self.started = 1
        self.objective, self.loss, self.accuracy = f, loss, accuracy
        self.grad[...] = grad
        self._pg = None
        self.grad_norm = self.grad_norm0 = norm(self._pseudo())
        if self.grad_norm0 == 0:
            self._finish(1)
            return
        self._search_from(self.objective)

    def _accept(self, point, f, loss, accuracy, grad):
        """The line search's step is taken: its pair enters the history."""
        xp = array_module(self.params)
        s_new = xp.subtract(point, self.params, out=self._s_new)
        y_new = xp.subtract(grad, self.grad, out=self._y_new)
        if dot(s_new, y_new) > 1e-10 * dot(y_new, y_new):
            self.newest = (self.newest + 1) % self.memory
            self.s[self.newest], self.y[self.newest] = s_new, y_new
            self.pairs = min(self.pairs + 1, self.memory)
        previous = self.objective
        self.params[...] = point
        self.grad[...] = grad
        self._pg = None
        self.objective, self.loss, self.accuracy = f, loss, accuracy
        self.accepted_step = self.search.step
        self.grad_norm = norm(self._pseudo())
        self.iteration += 1
        self._ended = True
        self.rounds = self.index
        change = previous - f
        size = max(abs(previous), abs(f), float(np.finfo(self.dtype).tiny))
        if self.grad_norm <= self.tol * self.grad_norm0:
            self._finish(1)
        elif change <= self.tol * size:
            self._finish(2)
        elif self.iteration >= self.max_iter:
            self._finish(3)
        else:
            self.index = 0
            self._search_from(f)

    def _search_from(self, f):
        """The next direction, and a line search along it."""
        xp = array_module(self.params)
        pg, direction = self._pseudo(), self.direction
        if self.pairs:
            order = [(self.newest - i) % self.memory for i in range(self.pairs)]
            two_loop(pg, self.s, self.y, order, out=direction, scratch=self._work)
        else:
            xp.negative(pg, out=direction)
        if self.l1:
            direction[...] = constrain(direction, pg)
        slope = dot(pg, direction)
        if not slope < 0:  # not a descent direction: forget the history
            self.pairs = 0
            xp.negative(pg, out=direction)
            slope = -dot(pg, pg)
        # Without curvature pairs the first trial moves a unit distance; with them the
        # quasi-Newton step is already scaled.
        step = 1.0 if self.pairs else 1.0 / norm(pg)
        slack = rounding_slack(f, self.dtype)
        self.search = (Backtracking(f, step, slack) if self.l1
                       else StrongWolfe(f, slope, step, slack))

    def _failed(self):
        """No step along the direction lowered the objective. A quasi-Newton direction
        may be the history's fault (a non-convex model, rounding in old pairs): try
        steepest descent once before calling the point final."""
        if self.pairs:
            self.pairs = 0
            self._search_from(self.objective)
        else:
            self._finish(4)

    def _finish(self, code: int):
        self.done, self.stop, self._ended = 1, code, True
        self.rounds = self.index
        self.search = None

    # --- records ----------------------------------------------------------------------
    def period_record(self, period: int, totals) -> dict:
        """One line per iteration: where its accepted step led, or a warm-start epoch's
        line (``Minibatch``'s)."""
        if self._last is Batch:
            return self.warm.period_record(period, totals)
        record = {"iteration": period, "objective": self.objective, "train_loss": self.loss}
        if self.model.is_classifier:
            record["train_accuracy"] = self.accuracy
        record.update({"grad_norm": self.grad_norm, "step_size": self.accepted_step,
                       "evaluations": self.rounds})
        if self.done:
            record["stop"] = STOPS[self.stop]
        return record
