"""The vector arithmetic of L-BFGS and OWL-QN, on NumPy or CuPy arrays alike.

    direction = two_loop(grad, s, y, order)            # -H grad from the stored pairs
    pg = pseudo_gradient(x, grad, l1, mask)            # OWL-QN: the L1 term's steepest side
    x_new = project(x + t * d, orthant(x, pg, mask), mask)

These are pure functions of their arguments (no data, no ranks): every rank computes
them on the same reduced gradient and the same history, so every rank keeps the same
iterate. References: Nocedal and Wright, Numerical Optimization (2nd ed.), algorithm
7.4 (the two-loop recursion); Andrew and Gao, "Scalable training of L1-regularized
log-linear models", ICML 2007 (OWL-QN).
"""
from __future__ import annotations

import math

import numpy as np

from ..devices.arrays import array_module


def dot(a, b) -> float:
    """a . b with the same bits on every rank. Each rank computes the solver's scalars
    from the same vectors, and every decision (a step, a stop) follows from them; a
    threaded BLAS dot sums in an order that depends on its thread count, which can
    differ between ranks (nodes of other sizes, uneven ranks per node). NumPy's einsum
    sums in one fixed order, on one thread."""
    xp = array_module(a)
    if xp is np:
        return float(np.einsum("i,i->", a, b))
    return float(xp.dot(a, b))


def norm(a) -> float:
    return math.sqrt(dot(a, a))


def two_loop(grad, s, y, order, out=None, scratch=None):
    """-H grad, where H is the L-BFGS inverse Hessian built from the pairs ``s[j]``,
    ``y[j]`` for j in ``order`` (newest first), scaled by s.y / y.y of the newest.
    ``out`` and ``scratch`` (vectors like ``grad``) spare the allocations: at a million
    parameters a fresh vector costs more in page faults than the arithmetic on it."""
    xp = array_module(grad)
    q = grad.copy() if out is None else out
    if out is not None:
        q[...] = grad
    tmp = xp.empty_like(grad) if scratch is None else scratch
    alphas, rhos = [], []
    for j in order:
        rho = 1.0 / dot(y[j], s[j])
        a = rho * dot(s[j], q)
        q -= xp.multiply(y[j], a, out=tmp)
        alphas.append(a)
        rhos.append(rho)
    newest = order[0]
    q *= dot(s[newest], y[newest]) / dot(y[newest], y[newest])
    for j, a, rho in zip(reversed(order), reversed(alphas), reversed(rhos)):
        b = rho * dot(y[j], q)
        q += xp.multiply(s[j], a - b, out=tmp)
    return xp.negative(q, out=q)


def pseudo_gradient(x, grad, l1: float, mask):
    """OWL-QN's pseudo-gradient of f(x) + l1 * sum(|x_i|, mask_i = 1) at ``x``, where
    ``grad`` is f's gradient: the slope of steepest descent where |x_i| has a kink
    (x_i = 0), and the plain gradient elsewhere and where ``mask`` is 0."""
    xp = array_module(grad)
    if l1 == 0:
        return grad.copy()
    right, left = grad + l1, grad - l1  # slopes to the right and to the left of 0
    at_zero = xp.where(right < 0, right, xp.where(left > 0, left, 0.0))
    pg = xp.where(x > 0, right, xp.where(x < 0, left, at_zero))
    return xp.where(mask != 0, pg, grad).astype(grad.dtype, copy=False)


def orthant(x, pg, mask):
    """The sign pattern a step may not leave: sign(x_i), or sign(-pg_i) where x_i = 0;
    0 where the L1 term does not apply (``mask`` 0: nothing to keep)."""
    xp = array_module(x)
    signs = xp.where(x != 0, xp.sign(x), -xp.sign(pg))
    return xp.where(mask != 0, signs, 0).astype(x.dtype, copy=False)


def constrain(direction, pg):
    """Zero the components of ``direction`` that do not descend along -pg (OWL-QN
    keeps the quasi-Newton direction inside the orthant that -pg points into)."""
    xp = array_module(direction)
    return xp.where(direction * pg < 0, direction, 0).astype(direction.dtype, copy=False)


def project(point, signs, mask, out=None):
    """``point`` with every L1 coordinate that crossed out of its orthant ``signs``
    set to 0 (coordinates whose mask is 0 move freely)."""
    xp = array_module(point)
    keep = (mask == 0) | (point * signs > 0)
    if out is None:
        return xp.where(keep, point, 0).astype(point.dtype, copy=False)
    xp.multiply(point, keep, out=out)
    return out
