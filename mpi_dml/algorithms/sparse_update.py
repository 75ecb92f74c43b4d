"""The optimizer step on a compact gradient: the first layer's rows of the features a
batch touched (over every rank), then the rest of the model as usual.

A batch of sparse rows touches a few thousand of a million features. Its gradient is
exchanged compactly (``models.dense`` ``compact_size``: the first layer's weight cut to
the touched rows, every other parameter as it is), and the step then costs what the
batch touched, in one of two ways:

* ``lazy`` (plain SGD, no momentum, on the CPU): only the touched rows are updated. An
  untouched row has a zero gradient, so all a step does to it is weight decay
  (``p -= lr * wd * p``) and the L1 soft threshold (``|p| -> max(|p| - lr * l1, 0)``).
  A decay then a threshold compose into one of each, so the steps a row missed are
  caught up in closed form when it is next touched, before the forward pass reads it
  (``kernels.sparse.lazy_catch_up``), from a history of two running numbers per step.
  Every row is caught up whenever the state is read (``arrays``: checkpoints, replica
  checks, validation, the saved model) and at each epoch's end, so what is stored
  equals the dense update's model and the history stays short.
* ``dense`` (momentum, Nesterov, Adam, AdamW; any optimizer on a GPU): those move
  untouched weights too (the velocity or the moments keep going), with no closed form
  for the catch-up of Adam's. The compact gradient is put into a dense gradient buffer
  (zero elsewhere; only the rows the last step wrote are cleared) and the usual fused
  update runs over every parameter. The exchange still moves only the touched rows.
"""
from __future__ import annotations

import numpy as np

# A history whose running decay product falls below this is caught up and restarted,
# long before a float64 underflow could lose the catch-up's ratio.
_SMALLEST_DECAY = 1e-150


def lazy_possible(solver, xp) -> bool:
    """Whether the touched-rows-only SGD step applies: plain SGD on the CPU with a decay
    factor ``1 - lr * weight_decay`` that stays positive (the peak rate is ``lr``)."""
    return (xp is np and solver.optimizer == "sgd" and solver.momentum == 0
            and solver.lr * solver.weight_decay < 1)


class SparseUpdate:
    """Applies reduced compact gradients to ``params`` with ``opt`` (an ``Optimizer``
    over the whole flat buffer) for ``model``'s layout."""

    def __init__(self, model, opt, params, solver, xp):
        self.model, self.opt, self.params, self.solver, self.xp = model, opt, params, solver, xp
        self.offset, self.size = model.first_weight()
        self.n_out = model.layers[0].n_out
        self.w0 = params[self.offset:self.offset + self.size].reshape(model.n_features,
                                                                    self.n_out)
        self.lazy = lazy_possible(solver, xp)
        # Made at the first compact step, so dense rows never pay for them.
        self.last = None  # lazy: the clock each first-layer row is current at
        self._hist_a = np.ones(64)
        self._hist_s = np.zeros(64)
        self.clock = 0  # lazy steps taken since the history began
        self.grad = None  # dense: the compact gradient spread out
        self._written = None  # first-layer rows the last step wrote into ``grad``

    # --- steps ----------------------------------------------------------------------
    def step(self, buf, rows, lr: float, grad_scale: float):
        """One step with the reduced compact gradient ``buf`` for first-layer ``rows``
        (sorted, device array on a GPU), of ``grad_scale`` times the sums."""
        if not self.lazy:
            self.opt.step(self.params, self._spread(buf, rows), lr, grad_scale)
            return
        s, c, p = self.solver, self.offset, self.params
        k, opt = self.opt.k, self.opt
        cut = c + len(rows) * self.n_out
        vel, mask = opt.state["velocity"], opt.mask
        # The parameters before and after the first layer's weight, as the dense step.
        if c:
            k.sgd_update(p[:c], buf[:c], vel[:c], lr, 0.0, False, s.weight_decay, s.l1,
                         mask[:c], grad_scale)
        tail = c + self.size
        k.sgd_update(p[tail:], buf[cut:], vel[tail:], lr, 0.0, False, s.weight_decay, s.l1,
                     mask[tail:], grad_scale)
        from ..kernels import sparse as sparse_kernels  # Numba, loaded for sparse rows only

        now = self.clock + 1
        self._grow(now)
        if self.last is None:  # int32: a history lasts an epoch at most
            self.last = np.zeros(self.model.n_features, dtype=np.int32)
        sparse_kernels.lazy_sgd_rows(self.w0, rows, buf[c:cut].reshape(-1, self.n_out),
                                     self.last, self._hist_a, self._hist_s, now, lr,
                                     s.weight_decay, s.l1, grad_scale)
        a = self._hist_a[now - 1] * (1 - lr * s.weight_decay)
        self._hist_a[now] = a
        self._hist_s[now] = self._hist_s[now - 1] + lr * s.l1 / a
        self.clock = now
        opt.step_count += 1
        if a < _SMALLEST_DECAY:
            self.catch_up()

    def dense_step(self, buf, lr: float, grad_scale: float):
        """A round whose gradient came dense (most features touched): every row is
        brought up to date first, then the usual update."""
        self.catch_up()
        self.opt.step(self.params, buf, lr, grad_scale)

    def _spread(self, buf, rows):
        """The compact gradient in dense layout, zero on the untouched rows."""
        if self.grad is None:
            self.grad = self.xp.zeros(self.model.size, dtype=self.params.dtype)
        g, c, cut = self.grad, self.offset, self.offset + len(rows) * self.n_out
        g0 = g[c:c + self.size].reshape(-1, self.n_out)
        if self._written is not None:
            g0[self._written] = 0
        g[:c] = buf[:c]
        g0[rows] = buf[c:cut].reshape(-1, self.n_out)
        g[c + self.size:] = buf[cut:]
        self._written = rows
        return g

    # --- the lazy rows ----------------------------------------------------------------
    def catch_up_rows(self, rows):
        """``rows`` brought up to date before a forward pass reads them. Every rank
        catches up the same rows (the union over ranks) at the same step, so their
        parameters stay equal bit for bit."""
        if self.lazy and self.clock and self.last is not None:
            from ..kernels import sparse as sparse_kernels
            sparse_kernels.lazy_catch_up(self.w0, self.last, self._hist_a, self._hist_s,
                                         self.clock, rows)

    def catch_up(self):
        """Every first-layer row brought up to date, and the history started again."""
        if not self.lazy or self.clock == 0:
            return
        from ..kernels import sparse as sparse_kernels
        sparse_kernels.lazy_catch_up(self.w0, self.last, self._hist_a, self._hist_s,
                                     self.clock)
        self.reset()

    def reset(self):
        """Forget the history: every row is current (after a catch-up or a restore)."""
        if self.last is not None:
            self.last[:] = 0
        self.clock = 0

    def _grow(self, now):
        if now < len(self._hist_a):
            return
        more = len(self._hist_a)
        self._hist_a = np.concatenate([self._hist_a, np.ones(more)])
        self._hist_s = np.concatenate([self._hist_s, np.zeros(more)])
