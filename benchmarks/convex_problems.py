"""The problems ``bench_convex.py`` solves, the formula it scores every tool with, and its
alpha-beta cost model; pure NumPy/SciPy, no MPI, tested in ``tests/test_bench_convex.py``.

    $ python benchmarks/convex_problems.py --rows 100000 --features 50   # optimum of one

The objective, as ``mpi_dml train --optimizer lbfgs`` documents it, for rows ``x_i``,
labels ``y_i`` in {0, 1}, weights ``w`` and bias ``b``:

    F(w, b) = mean_i [log(1 + exp(z_i)) - y_i z_i] + wd/2 ||w||^2 + l1 ||w||_1,
    z_i = x_i . w + b                               (the bias is not regularized)

scikit-learn's ``LogisticRegression(C=C)`` minimises ``n`` times the same with
``C = 1 / (wd n)``. Snap ML's ``LogisticRegression(regularizer=R, fit_intercept=True,
intercept_scaling=s)`` minimises ``sum_i loss + R/2 (||w||^2 + v^2)`` where ``v`` is the
weight of a constant feature ``s`` it appends (checked against SciPy on small problems,
see the tests): with ``R = wd n`` that is ``n`` times ``F + wd/(2 s^2) b^2``, with
``b = s v``. It regularizes its intercept, and its ``intercept_`` is ``v``, not ``b``.
"""
from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import numpy as np

WITHIN = 1e-6  # the relative gap to the optimum every tool must reach


# --- the dense problem ------------------------------------------------------------------
class Dense(NamedTuple):
    x: np.ndarray      # (rows, features) float64, C order
    y: np.ndarray      # float64 labels 0/1
    weights: np.ndarray
    bias: float


def make_dense(rows: int, features: int, seed: int = 0) -> Dense:
    """Rows drawn as a logistic model's data: ``x ~ N(0, 1)`` with feature ``j`` scaled by
    ``1 + j / features`` (unequal scales, as raw features have, so the problem is not
    perfectly conditioned), true weights ``N(0, 1)`` scaled to a margin of standard
    deviation 3 (classes overlap: the optimum is finite without regularization), bias
    0.5, labels ``1`` with probability ``sigmoid(margin)``."""
    rng = np.random.default_rng([seed, 2])
    scale = 1.0 + np.arange(features) / features
    x = rng.standard_normal((rows, features)) * scale
    w = rng.standard_normal(features)
    w *= 3.0 / np.sqrt(np.sum((w * scale) ** 2))
    margin = x @ w + 0.5
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-margin))).astype(np.float64)
    return Dense(x, y, w, 0.5)


# --- the objective ----------------------------------------------------------------------
def objective(x, y, w, b: float, wd: float, l1: float = 0.0, bias_penalty: float = 0.0
              ) -> float:
    """F(w, b) above, in float64; ``bias_penalty`` adds ``bias_penalty/2 b^2`` (Snap ML's
    own objective, scaled by 1/n, has ``wd / s^2`` here)."""
    w = np.asarray(w, dtype=np.float64).ravel()
    z = x @ w + b
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
    return loss + wd / 2 * float(w @ w) + l1 * float(np.abs(w).sum()) + bias_penalty / 2 * b * b


def objective_and_gradient(theta, x, y, wd: float, bias_penalty: float = 0.0):
    """F and its gradient at ``theta = [w, b]`` (smooth part only: no l1), for SciPy."""
    w, b = theta[:-1], theta[-1]
    z = x @ w + b
    n = len(y)
    r = (0.5 * (1.0 + np.tanh(0.5 * z)) - y) / n  # sigmoid without overflow warnings
    f = (float(np.mean(np.logaddexp(0.0, z) - y * z)) + wd / 2 * float(w @ w)
         + bias_penalty / 2 * b * b)
    g = np.empty_like(theta)
    g[:-1] = x.T @ r + wd * w
    g[-1] = r.sum() + bias_penalty * b
    return f, g


def hessian_product(theta, v, x, y, wd: float, bias_penalty: float = 0.0):
    """The Hessian of F at ``theta`` times ``v``: one pass over the rows each way."""
    w, b = theta[:-1], theta[-1]
    p = 0.5 * (1.0 + np.tanh(0.5 * (x @ w + b)))
    u = p * (1.0 - p) * (x @ v[:-1] + v[-1]) / len(y)
    out = np.empty_like(v)
    out[:-1] = x.T @ u + wd * v[:-1]
    out[-1] = u.sum() + bias_penalty * v[-1]
    return out


def reference_optimum(x, y, wd: float, bias_penalty: float = 0.0, tight: float = 1e-10,
                      max_iter: int = 200) -> dict:
    """F's minimiser by SciPy's Newton-CG (exact Hessian products: quadratic convergence
    makes an optimum far tighter than any tool is asked for, cheaply). ``gap_bound`` is
    ||g||^2 / (2 wd |F|), the relative gap it leaves were F wd-strongly convex (the bias
    is not regularized, so an estimate); Newton-CG is restarted from its answer (it
    stops on the step's size) until that is below ``tight`` or F stops falling."""
    from scipy.optimize import minimize

    t0 = time.perf_counter()
    theta, newton, value = np.zeros(x.shape[1] + 1), 0, np.inf
    for _ in range(5):
        r = minimize(objective_and_gradient, theta, args=(x, y, wd, bias_penalty), jac=True,
                     hessp=lambda t, v, *a: hessian_product(t, v, *a), method="Newton-CG",
                     options={"maxiter": max_iter, "xtol": 1e-14})
        newton += int(r.nit)
        if r.fun >= value:
            break
        theta, value = r.x, float(r.fun)
        grad = objective_and_gradient(theta, x, y, wd, bias_penalty)[1]
        bound = float(grad @ grad) / (2 * wd * abs(value))
        if bound <= tight:
            break
    return {"objective": value, "weights": theta[:-1], "bias": float(theta[-1]),
            "iterations": newton, "grad_max": float(np.abs(grad).max()), "gap_bound": bound,
            "message": str(r.message), "seconds": time.perf_counter() - t0}


def relative_gap(value: float, best: float) -> float:
    """(F - F*) / |F*|: how far a scored solution is above the optimum, relatively."""
    return (value - best) / abs(best)


def score(x, y, wd: float, weights, bias: float, best: float, bias_penalty: float = 0.0
          ) -> dict:
    """A tool's solution scored by the benchmark's own formula, against ``best``."""
    value = objective(x, y, weights, bias, wd, bias_penalty=bias_penalty)
    gap = relative_gap(value, best)
    return {"objective": value, "gap": gap, "within": gap <= WITHIN}


# --- the alpha-beta model of one iteration ----------------------------------------------
def fit_alpha_beta(nbytes, seconds, ranks: int = 2) -> tuple[float, float]:
    """alpha (s) and beta (s/byte) of ``allreduce_time`` from timings at ``ranks`` ranks:
    a least-squares line ``a + c bytes`` weighted by 1/time (relative errors: sizes span
    four orders of magnitude), then ``a = 2 log2(P) alpha`` and ``c = 2 (P-1)/P beta``."""
    nbytes, seconds = np.asarray(nbytes, float), np.asarray(seconds, float)
    design = np.column_stack([np.ones_like(nbytes), nbytes]) / seconds[:, None]
    (a, c), *_ = np.linalg.lstsq(design, np.ones_like(seconds), rcond=None)
    return max(a, 0.0) / (2 * np.log2(ranks)), max(c, 0.0) / (2 * (ranks - 1) / ranks)


def allreduce_time(p: int, nbytes: float, alpha: float, beta: float) -> float:
    """Rabenseifner's Allreduce (reduce-scatter by recursive halving, then allgather by
    recursive doubling; MPICH's choice for long vectors): 2 log2(P) messages of latency
    alpha and 2 (P-1)/P of the vector through each rank's link; 0 on one rank."""
    if p <= 1:
        return 0.0
    return 2 * np.log2(p) * alpha + 2 * (p - 1) / p * nbytes * beta


def fit_compute(rows_per_rank, seconds) -> tuple[float, float]:
    """Compute seconds per evaluation as ``fixed + per_row rows`` through two (or more)
    points: the fixed part is the work every rank repeats whatever its share (the
    L-BFGS two-loop over all weights, the line search's vector updates). Clamped to >= 0
    (noise on a shared machine can tilt a line through two points)."""
    rows, secs = np.asarray(rows_per_rank, float), np.asarray(seconds, float)
    if len(set(rows)) < 2:
        return 0.0, float(secs.mean() / rows.mean())
    per_row, fixed = np.polyfit(rows, secs, 1)
    if per_row < 0:
        return float(secs.mean()), 0.0
    if fixed < 0:
        return 0.0, float(np.sum(secs * rows) / np.sum(rows * rows))
    return float(fixed), float(per_row)


def model_rows(rows: int, nbytes: int, fixed: float, per_row: float, evaluations: float,
               alpha: float, beta: float, max_p: int = 1024) -> list[dict]:
    """Modelled seconds per L-BFGS iteration at P = 1, 2, 4, ... ``max_p`` ranks:
    ``evaluations`` x (compute on the rank's share + one Allreduce of ``nbytes``).
    Strong scaling: the ``rows`` are split over P ranks (ceil); weak: every rank keeps
    ``rows``."""
    out, p = [], 1
    while p <= max_p:
        share = -(-rows // p)
        comm = allreduce_time(p, nbytes, alpha, beta)
        strong = evaluations * (fixed + per_row * share + comm)
        weak = evaluations * (fixed + per_row * rows + comm)
        out.append({"p": p, "rows_per_rank": share,
                    "compute_s": evaluations * (fixed + per_row * share),
                    "allreduce_s": evaluations * comm, "strong_s": strong, "weak_s": weak})
        p *= 2
    base = out[0]["strong_s"]
    for r in out:
        r["speedup"] = base / r["strong_s"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="The reference optimum of one dense problem.")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=None, help="default 1/rows (C = 1)")
    args = ap.parse_args(argv)
    data = make_dense(args.rows, args.features)
    wd = args.weight_decay if args.weight_decay is not None else 1.0 / args.rows
    ref = reference_optimum(data.x, data.y, wd)
    print({k: v for k, v in ref.items() if k != "weights"})


if __name__ == "__main__":
    main()
