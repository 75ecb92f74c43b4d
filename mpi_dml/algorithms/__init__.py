"""Training algorithms the engine drives; ``base`` holds the contract between them.

    >>> algorithm = make_algorithm(cfg, model, dev, initial_params, n_train=n)

Minibatch gradient descent (SGD, Adam, AdamW) takes one global batch a round; full-batch
L-BFGS and OWL-QN (``lbfgs``) take full passes over the data, several per iteration for
their line search. An algorithm with no gradient at all (k-means) implements the same
contract without touching the engine.
"""
from __future__ import annotations

from .base import Algorithm, Batch, FullPass
from .lbfgs import LBFGS
from .minibatch import Minibatch
from .optimizers import OPTIMIZERS

# optimizer setting -> the algorithm that runs it
ALGORITHMS = {**{name: Minibatch for name in OPTIMIZERS}, "lbfgs": LBFGS}


def make_algorithm(cfg, model, dev, params, *, n_train: int) -> Algorithm:
    """The algorithm ``cfg`` asks for, starting from ``params`` (host, every rank's the
    same), on device ``dev``."""
    return ALGORITHMS[cfg.optimizer](cfg.solver, model, dev, params, n_train=n_train)


__all__ = ["ALGORITHMS", "Algorithm", "Batch", "FullPass", "LBFGS", "Minibatch", "make_algorithm"]
