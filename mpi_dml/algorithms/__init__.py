"""Training algorithms the engine drives; ``base`` holds the contract between them.

    >>> algorithm = make_algorithm(cfg, model, dev, initial_params, n_train=n)

Minibatch gradient descent (SGD, Adam, AdamW) is the one algorithm today; an algorithm
that needs full passes over the data (a quasi-Newton method and its line search) or
no gradient at all (k-means) implements the same contract without touching the engine.
"""
from __future__ import annotations

from .base import Algorithm, Batch, FullPass
from .minibatch import Minibatch
from .optimizers import OPTIMIZERS

# optimizer setting -> the algorithm that runs it
ALGORITHMS = {name: Minibatch for name in OPTIMIZERS}


def make_algorithm(cfg, model, dev, params, *, n_train: int) -> Algorithm:
    """The algorithm ``cfg`` asks for, starting from ``params`` (host, every rank's the
    same), on device ``dev``."""
    return ALGORITHMS[cfg.optimizer](cfg.solver, model, dev, params, n_train=n_train)


__all__ = ["ALGORITHMS", "Algorithm", "Batch", "FullPass", "Minibatch", "make_algorithm"]
