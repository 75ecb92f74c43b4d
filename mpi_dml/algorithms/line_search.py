"""A line search that satisfies the strong Wolfe conditions, one evaluation at a time.

    search = StrongWolfe(f0, slope0, step=1.0)
    while True:
        f, slope = phi(search.step)          # objective and its slope along the direction
        status = search.observe(f, slope)    # ACCEPT, CONTINUE, or FAILED
        if status != CONTINUE:
            break

Full-batch L-BFGS pays one pass over every rank's rows (and one Allreduce) for each
evaluation, so the search is a small state machine rather than a loop: the solver
evaluates ``search.step`` in one round and hands the reduced objective and slope to
``observe`` in the next. Its state is a handful of floats (``state`` / ``restore``),
which a checkpoint stores, so a job stopped in the middle of a search resumes it on any
number of ranks. Nothing here touches arrays: it is tested against SciPy on plain
functions.

The method is Nocedal and Wright's (Numerical Optimization, 2nd ed., algorithms 3.5
and 3.6): grow the step until an interval is known to hold a point that satisfies both
conditions, then shrink that interval by safeguarded cubic interpolation. Every
evaluation brings the slope too (the solver has the whole gradient), so each
interpolation uses values and slopes at both ends.

    sufficient decrease:  f(t) <= f(0) + c1 t f'(0)   (+ a rounding allowance)
    curvature (strong):   |f'(t)| <= c2 |f'(0)|

The accepted step is always the last one evaluated, so the solver has its gradient.
"""
from __future__ import annotations

import math

import numpy as np

ACCEPT, CONTINUE, FAILED = "accept", "continue", "failed"
C1, C2 = 1e-4, 0.9          # the usual constants for quasi-Newton directions
GROW = 4.0                  # how much the bracketing phase grows a step that is too short
MAX_STEP = 1e20
MAX_EVALUATIONS = 25        # each one is a full pass over the data: give up after these
# Cubic minimisers closer than this to an end of the interval (as a fraction of its
# width) are moved this far in, so the interval always shrinks by a useful amount.
SAFEGUARD = 0.1

_BRACKET, _ZOOM, _FINAL = 0, 1, 2


def rounding_slack(f0: float, dtype) -> float:
    """How far above f(0) an objective may be and still count as no worse. Near the
    optimum, f(t) - f(0) falls below the rounding of the summed loss; without this the
    decrease test would compare noise and the search would fail on a converged point."""
    return 64.0 * float(np.finfo(dtype).eps) * abs(f0)


class StrongWolfe:
    """One line search along a descent direction, from f(0) = ``f0`` with slope
    ``slope0`` < 0, whose first trial is ``step``. ``slack`` is the rounding allowance
    of the decrease test (``rounding_slack``)."""

    FIELDS = ("f0", "slope0", "slack", "step", "phase", "evaluations", "prev", "f_prev",
              "slope_prev", "lo", "f_lo", "slope_lo", "hi", "f_hi", "slope_hi")

    def __init__(self, f0: float, slope0: float, step: float, slack: float = 0.0):
        if not slope0 < 0:
            raise ValueError(f"the direction must descend: slope {slope0} is not < 0")
        self.f0, self.slope0, self.slack = float(f0), float(slope0), float(slack)
        self.step = min(float(step), MAX_STEP)
        self.phase, self.evaluations = _BRACKET, 0
        self.prev, self.f_prev, self.slope_prev = 0.0, self.f0, self.slope0
        # The interval of the zoom phase: lo is the best step so far that decreases
        # enough; hi is its other end.
        self.lo = self.f_lo = self.slope_lo = 0.0
        self.hi = self.f_hi = self.slope_hi = 0.0

    # --- state, for checkpoints -------------------------------------------------------
    def state(self) -> dict:
        return {name: float(getattr(self, name)) for name in self.FIELDS}

    @classmethod
    def restore(cls, state: dict) -> "StrongWolfe":
        search = cls.__new__(cls)
        for name in cls.FIELDS:
            value = state[name]
            setattr(search, name, math.inf if value is None else float(value))  # JSON null
        search.phase, search.evaluations = int(search.phase), int(search.evaluations)
        return search

    # --- the search -------------------------------------------------------------------
    def _decreases(self, step: float, f: float) -> bool:
        return f <= self.f0 + C1 * step * self.slope0 + self.slack

    def _flat(self, slope: float) -> bool:
        return abs(slope) <= -C2 * self.slope0

    def observe(self, f: float, slope: float) -> str:
        """Take f and f' at ``step``; return ACCEPT (``step`` is the answer), CONTINUE
        (evaluate the new ``step``) or FAILED (no step decreases f: the direction is
        spent, usually because f is at its rounding level)."""
        self.evaluations += 1
        step = self.step
        if not math.isfinite(f):  # an overflow far out along the direction: shrink
            f, slope = math.inf, math.nan
        if self.phase == _FINAL:  # the best point of a search that ran out of evaluations
            return ACCEPT
        if self.phase == _BRACKET:
            status = self._bracket(step, f, slope)
        else:
            status = self._zoom(step, f, slope)
        if status == CONTINUE and self.evaluations >= MAX_EVALUATIONS:
            return self._give_up()
        return status

    def _bracket(self, step, f, slope) -> str:
        if not self._decreases(step, f) or (self.evaluations > 1 and f >= self.f_prev):
            return self._start_zoom(self.prev, self.f_prev, self.slope_prev, step, f, slope)
        if self._flat(slope):
            return ACCEPT
        if slope >= 0:  # past a minimum along the line, which lies behind
            return self._start_zoom(step, f, slope, self.prev, self.f_prev, self.slope_prev)
        if step >= MAX_STEP:
            return ACCEPT  # still descending at the largest step allowed
        self.prev, self.f_prev, self.slope_prev = step, f, slope
        self.step = min(step * GROW, MAX_STEP)
        return CONTINUE

    def _start_zoom(self, lo, f_lo, slope_lo, hi, f_hi, slope_hi) -> str:
        self.phase = _ZOOM
        self.lo, self.f_lo, self.slope_lo = lo, f_lo, slope_lo
        self.hi, self.f_hi, self.slope_hi = hi, f_hi, slope_hi
        return self._next_trial()

    def _zoom(self, step, f, slope) -> str:
        if not self._decreases(step, f) or f >= self.f_lo:
            self.hi, self.f_hi, self.slope_hi = step, f, slope
        else:
            if self._flat(slope):
                return ACCEPT
            if slope * (self.hi - self.lo) >= 0:
                self.hi, self.f_hi, self.slope_hi = self.lo, self.f_lo, self.slope_lo
            self.lo, self.f_lo, self.slope_lo = step, f, slope
        return self._next_trial()

    def _next_trial(self) -> str:
        lo, hi = self.lo, self.hi
        width = hi - lo
        if abs(width) <= 1e-12 * max(abs(lo), abs(hi)):
            return self._give_up()  # the interval has shrunk to rounding
        trial = cubic_minimizer(lo, self.f_lo, self.slope_lo, hi, self.f_hi, self.slope_hi)
        low, high = sorted((lo + SAFEGUARD * width, hi - SAFEGUARD * width))
        # Kept off the ends, but near the cubic's choice: a minimiser close to an end
        # is usually close to the answer, which the midpoint would walk away from.
        trial = lo + 0.5 * width if trial is None else min(max(trial, low), high)
        self.step = trial
        return CONTINUE

    def _give_up(self) -> str:
        """Out of evaluations or of interval: settle for the best step that decreased
        f (evaluated once more, so the solver holds its gradient), or fail."""
        best = self.lo if self.phase == _ZOOM else self.prev
        if best > 0:
            self.phase, self.step = _FINAL, best
            return CONTINUE
        return FAILED


def cubic_minimizer(a, fa, da, b, fb, db):
    """The minimiser of the cubic through (a, fa) and (b, fb) with slopes da and db,
    or None when that cubic has none (or the numbers are not finite)."""
    if not all(math.isfinite(v) for v in (a, fa, da, b, fb, db)) or a == b:
        return None
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    radicand = d1 * d1 - da * db
    if radicand < 0:
        return None
    d2 = math.copysign(math.sqrt(radicand), b - a)
    denominator = db - da + 2.0 * d2
    if denominator == 0:
        return None
    return b - (b - a) * (db + d2 - d1) / denominator


class Backtracking:
    """OWL-QN's line search: halve the step until the objective falls by c1 times the
    first-order decrease ``decrease`` (the pseudo-gradient times the move, which the
    orthant projection makes depend on the step, so it is given at each trial). Its
    state has ``StrongWolfe``'s fields, so a checkpoint has one shape for both."""

    FIELDS = StrongWolfe.FIELDS

    def __init__(self, f0: float, step: float, slack: float = 0.0):
        for name in self.FIELDS:
            setattr(self, name, 0.0)
        self.f0, self.step, self.slack = float(f0), float(step), float(slack)
        self.phase = self.evaluations = 0

    state = StrongWolfe.state
    restore = classmethod(StrongWolfe.restore.__func__)

    def observe(self, f: float, decrease: float) -> str:
        """Take f at ``step`` and the first-order change there (< 0 when descending)."""
        self.evaluations += 1
        if math.isfinite(f) and f <= self.f0 + C1 * decrease + self.slack:
            return ACCEPT
        if self.evaluations >= MAX_EVALUATIONS:
            return FAILED
        self.step *= 0.5
        return CONTINUE
