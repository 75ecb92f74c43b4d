"""Optimizers over the flat buffers: SGD (momentum, Nesterov), Adam and AdamW.

An optimizer step is one fused kernel over the whole parameter buffer: the buffer is
contiguous, so there is no per-tensor loop and no per-tensor launch.
"""
from __future__ import annotations

import numpy as np

OPTIMIZERS = ("sgd", "adam", "adamw")  # minibatch optimizers
SOLVERS = OPTIMIZERS + ("lbfgs",)       # every --optimizer: these and full-batch L-BFGS


class Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over one flat parameter buffer.

    State buffers have the parameter buffer's layout, so a checkpoint can store them
    as flat arrays and restore them on any number of ranks. ``xp`` is the array module
    of the parameters (numpy, or cupy on a GPU): the state and the decay mask live
    where the parameters do.

    Regularisation applies where ``decay_mask`` is 1 (weights, never biases): weight
    decay as L2 in the gradient (decoupled for AdamW), and L1 after the update as the
    proximal step ``p = sign(p) * max(|p| - lr * l1, 0)``, so the velocity and Adam's
    moments carry the loss and L2 gradient only (``kernels/reference.py`` says why).
    """

    def __init__(self, cfg, decay_mask: np.ndarray, kernels, xp=np, *, dtype=None):
        # ``cfg``: the solver settings (``config.SolverSettings``, or a whole TrainConfig);
        # ``dtype`` of the state, by default the config's.
        self.cfg = cfg
        self.kind = cfg.optimizer
        self.mask = xp.asarray(decay_mask)  # no copy when it is there already
        self.k = kernels
        self.step_count = 0
        n = decay_mask.size
        dtype = np.dtype(cfg.dtype if dtype is None else dtype)
        if self.kind == "sgd":
            self.state = {"velocity": xp.zeros(n, dtype=dtype)}
        else:
            self.state = {"m": xp.zeros(n, dtype=dtype), "v": xp.zeros(n, dtype=dtype)}

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float, grad_scale: float = 1.0):
        """One update with the gradient ``grads * grad_scale``; ``grads`` is only read, so
        a summed gradient is divided inside the update rather than in a pass of its own."""
        c = self.cfg
        self.step_count += 1
        if self.kind == "sgd":
            self.k.sgd_update(params, grads, self.state["velocity"], lr, c.momentum,
                              c.nesterov, c.weight_decay, c.l1, self.mask, grad_scale)
        else:
            self.k.adam_update(params, grads, self.state["m"], self.state["v"], lr, c.beta1,
                               c.beta2, c.eps, self.step_count, c.weight_decay,
                               self.kind == "adamw", c.l1, self.mask, grad_scale)
