"""Two algorithms written against the engine/algorithm contract, as evidence that it holds.

    $ .venv/bin/python -m pytest -q tests/test_algorithm_contract.py

``algorithms.base`` promises that a full-batch algorithm with a line search and k-means
(no labels, no gradient) run on the engine as it is. These are small, plain versions of
both, used only by the tests:

* ``LBFGS``: L2-regularised full-batch L-BFGS on any model of ``models.protocol``
  (the tests use the built-in logistic model). Objective: mean loss over the training
  rows + alpha/2 ||w||^2 on the weights (``decay_mask``), not the bias. Each round is one
  ``FullPass`` whose buffer carries the loss sum in slot 0 and the gradient sum after it;
  an iteration is a backtracking (Armijo) line search of one or more rounds, and the
  last ``MEMORY`` (s, y) pairs are two (MEMORY, n) arrays of the state.
* ``KMeansModel`` + ``Lloyd``: the centroids are the flat parameters; each round's
  buffer is the per-cluster sums of rows, the per-cluster counts and the inertia.

Every value ``apply`` uses comes from the reduced buffer, the row count and the state,
so every rank keeps the same state, and the state (arrays and counters) is all a
checkpoint needs to continue at any round, in the middle of a line search included.
"""
from __future__ import annotations

import math

import numpy as np

from mpi_dml.algorithms.base import Algorithm, FullPass
from mpi_dml.devices.arrays import array_module
from mpi_dml.errors import TrainingFailed

MEMORY = 5          # (s, y) pairs L-BFGS keeps
ARMIJO_C1 = 1e-4    # sufficient decrease: f(x + t d) <= f(x) + c1 t g.d
MAX_HALVINGS = 40   # a line search that halves its step this often has lost descent
# Near the optimum f(x + t d) - f(x) falls below the rounding of the summed loss, and the
# Armijo test compares noise: steps whose objective is within this many ulps of f(x)
# are accepted, so the gradient keeps shrinking towards its own rounding level.
ROUNDING_ULPS = 64


# --- L-BFGS -------------------------------------------------------------------------
class LBFGS(Algorithm):
    """Full-batch L-BFGS with a backtracking Armijo line search.

    Parameters
    ----------
    model : a ``models.protocol`` model; ``loss_grad`` gives the summed loss gradient.
    dev : the engine's device (``xp``, ``from_host``, ``kernels``).
    params : initial flat parameters (host, the same on every rank).
    n_train : training rows over all ranks.
    alpha : L2 strength on the weights; the objective is mean loss + alpha/2 ||w||^2.
    max_iter : iterations at most (each ends with an accepted step and a metrics line).
    tol : stop once the objective's gradient has max-norm <= tol.
    """

    name = "lbfgs"
    can_skip = False

    def __init__(self, model, dev, params, *, n_train: int, alpha: float,
                 max_iter: int = 100, tol: float = 1e-12):
        self.model, self.dev, self.n_train = model, dev, n_train
        self.alpha, self.max_iter, self.tol = float(alpha), int(max_iter), float(tol)
        self._ended = False  # whether the round just applied ended an iteration
        self.periods = self.max_iter
        n, dtype = model.size, params.dtype
        self.params = dev.from_host(np.array(params))
        self.grad = dev.from_host(np.zeros(n, dtype))       # objective's gradient at params
        self.direction = dev.from_host(np.zeros(n, dtype))
        self.s = dev.from_host(np.zeros((MEMORY, n), dtype))  # steps, a ring of pairs
        self.y = dev.from_host(np.zeros((MEMORY, n), dtype))  # gradient changes
        self.mask = dev.from_host(model.decay_mask().astype(dtype))
        self.trial = dev.from_host(np.zeros(n, dtype))      # scratch: the point evaluated
        self.iteration = self.index = 0
        self.pairs, self.newest = 0, MEMORY - 1
        self.started = self.done = 0   # started: params' objective and gradient are known
        self.step = 0.0                # the trial step along ``direction``
        self.objective = self.loss = self.slope = self.accepted_step = 0.0

    # --- state ------------------------------------------------------------------------
    def buffer_size(self) -> int:
        return 1 + self.model.size  # loss sum, then the gradient sum

    def arrays(self) -> dict:
        return {"params": self.params, "grad": self.grad, "direction": self.direction,
                "s": self.s, "y": self.y}

    def counters(self) -> dict:
        return {"iteration": self.iteration, "evaluation": self.index, "pairs": self.pairs,
                "newest": self.newest, "started": self.started, "done": self.done,
                "step": self.step, "objective": self.objective, "loss": self.loss,
                "slope": self.slope, "accepted_step": self.accepted_step}

    def restore(self, arrays: dict, counters: dict):
        for name, target in self.arrays().items():
            target[...] = self.dev.from_host(arrays[name])
        for name in ("iteration", "pairs", "newest", "started", "done"):
            setattr(self, name, int(counters[name]))
        self.index = int(counters["evaluation"])
        for name in ("step", "objective", "loss", "slope", "accepted_step"):
            setattr(self, name, float(counters[name]))

    # --- rounds -----------------------------------------------------------------------
    def next_request(self):
        if self.done:
            return None
        # Whether this evaluation ends the iteration is known only in apply
        # (period_ended), once the line search has seen the reduced objective.
        return FullPass(self.iteration, self.index, ends_period=False)

    def _point(self):
        """The parameters this round evaluates: params, or the line search's trial."""
        if not self.started:
            return self.params
        xp = array_module(self.params)
        xp.multiply(self.direction, self.step, out=self.trial)
        self.trial += self.params
        return self.trial

    def contribute(self, request, rows, buffer):
        x, y = rows
        loss, _ = self.model.loss_grad(self._point(), buffer[1:], x, y, self.dev.kernels)
        buffer[0] = loss
        return np.array([x.shape[0]], dtype=np.float64)  # rows: evaluations over a period

    def period_ended(self, request) -> bool:
        return self._ended

    def apply(self, request, buffer, count: int):
        xp = array_module(self.params)
        self._ended = False
        buffer *= 1.0 / count
        point = self._point()
        weights = point * self.mask
        loss = float(buffer[0])
        objective = loss + 0.5 * self.alpha * float(xp.dot(weights, weights))
        grad = buffer[1:]
        grad += self.alpha * weights
        if not self.started:  # the first round: the objective at the initial parameters
            self.started, self.objective, self.loss = 1, objective, loss
            self.grad[...] = grad
            self._steepest_descent()
            # The first trial moves a unit distance (no curvature is known yet); the
            # search backtracks from there when that overshoots.
            self.step = 1.0 / max(float(xp.linalg.norm(self.grad)), 1e-300)
            self.index += 1
            if self._converged():
                self.done, self._ended = 1, True
            return
        slack = ROUNDING_ULPS * np.finfo(point.dtype).eps * abs(self.objective)
        if objective > self.objective + ARMIJO_C1 * self.step * self.slope + slack:
            self.step *= 0.5
            self.index += 1
            if self.index > MAX_HALVINGS:
                raise TrainingFailed(f"line search failed in iteration {self.iteration + 1}: "
                                     f"no sufficient decrease after {self.index} evaluations")
            return
        # Accepted: the pair (s, y) enters the history, the point becomes the parameters.
        s_new, y_new = point - self.params, grad - self.grad
        if float(xp.dot(s_new, y_new)) > 1e-12 * float(xp.dot(y_new, y_new)):
            self.newest = (self.newest + 1) % MEMORY
            self.s[self.newest], self.y[self.newest] = s_new, y_new
            self.pairs = min(self.pairs + 1, MEMORY)
        self.params[...] = point
        self.grad[...] = grad
        self.objective, self.loss, self.accepted_step = objective, loss, self.step
        self.iteration += 1
        self.index = 0
        self._ended = True
        self._two_loop()
        self.step = 1.0
        if self._converged() or self.iteration >= self.max_iter:
            self.done = 1

    def _converged(self) -> bool:
        return float(array_module(self.grad).abs(self.grad).max()) <= self.tol

    def _steepest_descent(self):
        self.direction[...] = -self.grad
        self.slope = -float(array_module(self.grad).dot(self.grad, self.grad))

    def _two_loop(self):
        """direction = -H grad, H the L-BFGS inverse Hessian of the stored pairs."""
        xp = array_module(self.grad)
        if self.pairs == 0:
            self._steepest_descent()
            return
        order = [(self.newest - i) % MEMORY for i in range(self.pairs)]  # newest first
        q = self.grad.copy()
        rho, a = {}, {}
        for j in order:
            rho[j] = 1.0 / float(xp.dot(self.y[j], self.s[j]))
            a[j] = rho[j] * float(xp.dot(self.s[j], q))
            q -= a[j] * self.y[j]
        newest = self.newest
        q *= float(xp.dot(self.s[newest], self.y[newest]) / xp.dot(self.y[newest], self.y[newest]))
        for j in reversed(order):
            b = rho[j] * float(xp.dot(self.y[j], q))
            q += (a[j] - b) * self.s[j]
        self.direction[...] = -q
        self.slope = float(xp.dot(self.grad, self.direction))
        if self.slope >= 0:  # not a descent direction: forget the history
            self.pairs = 0
            self._steepest_descent()

    # --- records ----------------------------------------------------------------------
    def period_record(self, period: int, totals) -> dict:
        """One line per iteration: where the accepted step led. ``evaluations`` counts
        the rounds of the iteration from the rows the engine summed over them."""
        return {"iteration": period, "objective": self.objective, "train_loss": self.loss,
                "grad_norm": float(array_module(self.grad).abs(self.grad).max()),
                "step_size": self.accepted_step,
                "evaluations": int(round(float(totals[0]) / self.n_train))}


def lbfgs(alpha: float, *, max_iter: int = 100, tol: float = 1e-12):
    """The engine's algorithm factory for ``LBFGS``: ``Engine(..., algorithm=lbfgs(a))``."""
    def factory(cfg, model, dev, params, *, n_train):
        return LBFGS(model, dev, params, n_train=n_train, alpha=alpha, max_iter=max_iter,
                     tol=tol)
    return factory


# --- k-means ------------------------------------------------------------------------
class KMeansModel:
    """``k`` centroids in ``d`` dimensions, as a model of ``models.protocol``.

    Parameters
    ----------
    k : number of clusters.
    low, high : the data's range per feature; ``init`` draws the centroids uniformly
        inside it from the seed alone, so they do not depend on the rank count.
    """

    is_classifier = False

    def __init__(self, k: int, low, high):
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.k, self.d = int(k), self.low.size
        self.size = self.k * self.d

    def init(self, flat, seed: int):
        rng = np.random.default_rng(seed)
        draw = rng.uniform(self.low, self.high, size=(self.k, self.d))
        flat[:] = array_module(flat).asarray(draw.ravel(), dtype=flat.dtype)

    def labels(self, y, dtype):
        return y.astype(dtype)  # unused: k-means has no labels

    def named(self, flat) -> dict:
        return {"centroids": flat.reshape(self.k, self.d)}

    def decay_mask(self):
        return np.zeros(self.size, dtype=np.uint8)

    def describe(self) -> dict:
        return {"kind": "kmeans", "clusters": self.k, "features": self.d}

    def assign(self, params, x):
        """(nearest centroid, squared distance to it) of each row."""
        xp = array_module(params)
        c = params.reshape(self.k, self.d)
        dist = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
        nearest = dist.argmin(axis=1)
        return nearest, xp.take_along_axis(dist, nearest[:, None], axis=1)[:, 0]

    def cluster_sums(self, params, x):
        """(per-cluster row sums (k, d), per-cluster counts (k,), inertia)."""
        xp = array_module(params)
        nearest, dist = self.assign(params, x)
        sums = xp.zeros((self.k, self.d), dtype=params.dtype)
        for j in range(self.k):
            sums[j] = x[nearest == j].sum(axis=0)
        counts = xp.bincount(nearest, minlength=self.k).astype(params.dtype)
        return sums, counts, float(dist.sum())

    def loss_grad(self, params, grads, x, y, kernels):
        """Inertia summed over the rows, and its gradient 2 (n_j c_j - sum_j x)."""
        sums, counts, inertia = self.cluster_sums(params, x)
        c = params.reshape(self.k, self.d)
        grads.reshape(self.k, self.d)[...] = 2.0 * (counts[:, None] * c - sums)
        return inertia, 0

    def evaluate(self, params, x, y, kernels):
        nearest, dist = self.assign(params, x)
        return float(dist.sum()), 0, nearest


class Lloyd(Algorithm):
    """Lloyd's k-means: each round assigns every row to its nearest centroid and moves
    each centroid to the mean of its rows (a cluster without rows keeps its centroid).

    Parameters
    ----------
    model : a ``KMeansModel``; the parameters are its centroids.
    max_iter : rounds at most; each is one period and one metrics line.
    tol : stop once the centroids moved by at most this much in squared norm, summed
        (0: once they stop moving, that is once no row changes cluster).
    """

    name = "lloyd"
    can_skip = False

    def __init__(self, model, dev, params, *, n_train: int, max_iter: int = 100,
                 tol: float = 0.0):
        self.model, self.dev, self.n_train = model, dev, n_train
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.periods = self.max_iter
        self.params = dev.from_host(np.array(params))
        self.counts = dev.from_host(np.zeros(model.k, params.dtype))  # rows per cluster
        self.iteration = self.done = 0
        self.shift = self.inertia = 0.0

    def buffer_size(self) -> int:
        return self.model.size + self.model.k + 1  # sums, counts, inertia

    def arrays(self) -> dict:
        return {"params": self.params, "counts": self.counts}

    def counters(self) -> dict:
        return {"iteration": self.iteration, "done": self.done, "shift": self.shift,
                "inertia": self.inertia}

    def restore(self, arrays: dict, counters: dict):
        for name, target in self.arrays().items():
            target[...] = self.dev.from_host(arrays[name])
        self.iteration, self.done = int(counters["iteration"]), int(counters["done"])
        self.shift, self.inertia = float(counters["shift"]), float(counters["inertia"])

    def next_request(self):
        if self.done or self.iteration >= self.max_iter:
            return None
        return FullPass(self.iteration, 0, ends_period=True)

    def contribute(self, request, rows, buffer):
        x, _ = rows
        k, size = self.model.k, self.model.size
        sums, counts, inertia = self.model.cluster_sums(self.params, x)
        buffer[:size] = sums.ravel()
        buffer[size:size + k] = counts
        buffer[-1] = inertia
        return np.array([inertia, x.shape[0]], dtype=np.float64)

    def apply(self, request, buffer, count: int):
        xp = array_module(self.params)
        k, d, size = self.model.k, self.model.d, self.model.size
        counts = buffer[size:size + k]
        old = self.params.reshape(k, d)
        new = xp.where(counts[:, None] > 0,
                       buffer[:size].reshape(k, d) / xp.maximum(counts, 1)[:, None], old)
        self.shift = float(((new - old) ** 2).sum())
        self.params[...] = new.ravel()
        self.counts[...] = counts
        self.inertia = float(buffer[-1])
        self.iteration += 1
        self.done = int(self.shift <= self.tol)

    def period_record(self, period: int, totals) -> dict:
        """Inertia of the round's assignment (before the move) and how far the
        centroids moved; ``rows`` is what the engine summed over the ranks."""
        return {"iteration": period, "inertia": self.inertia, "shift": self.shift,
                "empty_clusters": int((self.counts == 0).sum()), "rows": int(totals[1]),
                "inertia_by_ranks": float(totals[0])}


def lloyd(*, max_iter: int = 100, tol: float = 0.0):
    """The engine's algorithm factory for ``Lloyd``."""
    def factory(cfg, model, dev, params, *, n_train):
        return Lloyd(model, dev, params, n_train=n_train, max_iter=max_iter, tol=tol)
    return factory


# --- the two problems the tests run, in-process and under mpiexec ----------------------
LOGISTIC_ALPHA = 1.0 / 300  # scikit-learn's C = 1 on the 300 rows of logistic_data()
LBFGS_TOL = 1e-12
KMEANS_K = 4
SEED = 11
# check_every=1: the engine compares the ranks' parameter checksums after every round.
COMMON = dict(dtype="float64", device="cpu", progress="none", seed=SEED, check_every=1)


def fit_lbfgs(comm=None, **runtime):
    """Collective: L-BFGS on this rank's share (``split_rows``) of ``logistic_data()``;
    the finished engine. ``runtime``: more ``TrainConfig`` settings (out, resume)."""
    from mpi_dml.api.run import fit_arrays, world
    from mpi_dml.config import TrainConfig
    from mpi_dml.data.arrays import LABEL

    comm = world(comm)
    x, y = logistic_data()
    lo, hi = split_rows(len(x), comm.rank, comm.size)
    cfg = TrainConfig(model="logistic", label_column=LABEL, **{**COMMON, **runtime})
    return fit_arrays(cfg, x[lo:hi], y[lo:hi], comm=comm,
                      algorithm=lbfgs(LOGISTIC_ALPHA, max_iter=100, tol=LBFGS_TOL))


def kmeans_model(x, kind=None) -> KMeansModel:
    return (kind or KMeansModel)(KMEANS_K, x.min(axis=0), x.max(axis=0))


def fit_kmeans(comm=None, model_kind=None, **runtime):
    """Collective: Lloyd on this rank's share of ``blob_data()``, without labels;
    ``model_kind``: the model class (default ``KMeansModel``)."""
    from mpi_dml.api.run import fit_arrays, world
    from mpi_dml.config import TrainConfig
    from mpi_dml.data.arrays import LABEL

    comm = world(comm)
    x = blob_data()
    lo, hi = split_rows(len(x), comm.rank, comm.size)
    # "linear" only tells the data loader that the (absent) labels are not classes.
    cfg = TrainConfig(model="linear", label_column=LABEL, **{**COMMON, **runtime})
    return fit_arrays(cfg, x[lo:hi], None, comm=comm, model=kmeans_model(x, model_kind),
                      algorithm=lloyd(max_iter=100))


def initial_centroids(x) -> np.ndarray:
    """The centroids ``fit_kmeans`` starts from (rank 0 draws them from the seed)."""
    model = kmeans_model(x)
    flat = np.zeros(model.size)
    model.init(flat, SEED)
    return flat.reshape(model.k, model.d)


# --- data and NumPy references ---------------------------------------------------------
def logistic_data(n: int = 300, d: int = 5, seed: int = 3):
    """Rows that are not separable (label noise), so the L2 optimum is finite and
    well inside the data's scale."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(0.5, 4.0, d) + 0.3
    w = rng.normal(size=d)
    p = 1.0 / (1.0 + np.exp(-(x @ w - 0.4)))
    return x, (rng.uniform(size=n) < p).astype(np.float64)


def blob_data(n: int = 400, d: int = 3, k: int = 4, seed: int = 5):
    """Gaussian blobs around ``k`` random centres, with overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-4, 4, size=(k, d))
    which = rng.integers(0, k, size=n)
    return centres[which] + rng.normal(size=(n, d))


def logistic_objective(x, y, w, b, alpha):
    """(objective, gradient over (w, b)) of mean BCE + alpha/2 ||w||^2, in NumPy."""
    z = x @ w + b
    loss = np.mean(np.logaddexp(0.0, z) - y * z)
    r = 1.0 / (1.0 + np.exp(-z)) - y
    return (loss + 0.5 * alpha * w @ w,
            np.concatenate([x.T @ r / len(y) + alpha * w, [r.mean()]]))


def lloyd_replay(x, centroids, max_iter: int = 100):
    """Plain NumPy Lloyd from ``centroids`` until they stop moving: (centroids, rounds)."""
    c = np.array(centroids, dtype=np.float64)
    for rounds in range(1, max_iter + 1):
        nearest = ((x[:, None, :] - c[None]) ** 2).sum(axis=2).argmin(axis=1)
        new = c.copy()
        for j in range(len(c)):
            if (nearest == j).any():
                new[j] = x[nearest == j].mean(axis=0)
        moved = not np.array_equal(new, c)
        c = new
        if not moved:
            return c, rounds
    return c, max_iter


def split_rows(n: int, rank: int, size: int) -> tuple[int, int]:
    """An uneven split of ``n`` rows over ranks in order: rank r holds about (r + 1)
    parts of ``1 + 2 + ... + size``, so no two ranks hold the same number."""
    parts = np.cumsum(np.arange(size + 1))
    edges = (parts * n) // parts[-1]
    return int(edges[rank]), int(edges[rank + 1])


def logistic_weights(params, n_features: int):
    """(w, b) of the built-in logistic model's flat buffer (``Model.named``)."""
    from mpi_dml import models
    named = models.build_model("logistic", "classification", n_features, 2).named(params)
    return named["layers.0.weight"][:, 0].copy(), float(named["layers.0.bias"][0])


def relative_difference(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), math.ulp(1.0)))
