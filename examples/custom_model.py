"""Bring your own model: Poisson regression, written here, trained by mpi_dml on N ranks.

    $ python examples/custom_model.py
    $ mpiexec -n 4 python examples/custom_model.py
    $ srun --mpi=pmi2 -n 8 python examples/custom_model.py

The model is a class with ``size`` (how many parameters) and ``loss_grad`` (the loss and
its gradient SUMMED over a block of rows); ``mpi_dml.train`` does the rest: batches that
are the same on any number of ranks, one Allreduce per step, checkpoints, stops on
signals. Each rank makes only its own rows of one data set fixed by a seed, so every
rank count trains on the same rows and ends with the same parameters. The last line on
stdout (rank 0) is one JSON object: the final training loss and the parameters
(weights, then the intercept).
"""
from __future__ import annotations

import json
import sys

import numpy as np

import mpi_dml

N_ROWS = 4000                                   # rows over all ranks
TRUE_WEIGHTS = np.array([0.3, -0.2, 0.1, 0.25, -0.15])
TRUE_INTERCEPT = 0.5
BLOCK = 250                                     # rows drawn from one seed


class PoissonRegression(mpi_dml.CustomModel):
    """Counts with rate = exp(X @ w + b); the loss of a row is rate - y * (X @ w + b),
    the negative log-likelihood without its constant log(y!). Parameters are the
    weights, then the intercept, which no penalty touches."""

    def __init__(self, n_features: int):
        self.n_features = n_features
        self.size = n_features + 1

    def loss_grad(self, params, grad, X, y):
        eta = X @ params[:-1] + params[-1]
        rate = np.exp(eta)
        residual = rate - y                     # d loss / d eta, row by row
        grad[:-1] = X.T @ residual              # sums over the rows, never means
        grad[-1] = residual.sum()
        return float((rate - y * eta).sum())

    def decay_mask(self):
        mask = np.ones(self.size, dtype=np.uint8)
        mask[-1] = 0
        return mask

    def predict(self, params, X):
        return np.exp(X @ params[:-1] + params[-1])


def make_rows(lo: int, hi: int, seed: int = 2024):
    """Global rows [lo, hi): blocks of BLOCK rows, each drawn from (seed, block), so a
    rank draws only the blocks that hold its rows and any split gives the same data."""
    first = lo // BLOCK
    xs, ys = [np.empty((0, TRUE_WEIGHTS.size))], [np.empty(0)]
    for block in range(first, -(-hi // BLOCK)):
        rng = np.random.default_rng([seed, block])
        x = rng.normal(scale=0.8, size=(BLOCK, TRUE_WEIGHTS.size))
        xs.append(x)
        ys.append(rng.poisson(np.exp(x @ TRUE_WEIGHTS + TRUE_INTERCEPT)).astype(float))
    start = lo - first * BLOCK
    return (np.concatenate(xs)[start:start + hi - lo],
            np.concatenate(ys)[start:start + hi - lo])


def main() -> int:
    from mpi4py import MPI

    mpi_dml.setup_process()  # threads per rank, stops on SIGTERM, one rank's error ends all
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    X, y = make_rows(rank * N_ROWS // size, (rank + 1) * N_ROWS // size)
    # A cosine decay of the learning rate to 0 takes most of minibatch SGD's noise out
    # of the final parameters: they end about 1e-4 from the exact optimum.
    result = mpi_dml.train(PoissonRegression(X.shape[1]), X, y, solver="sgd",
                           learning_rate_init=0.02, momentum=0.9, batch_size=400,
                           max_iter=100, schedule="cosine", random_state=0)
    if rank == 0:
        print(f"epochs: {result.n_iter}, training loss: {result.loss_curve[0]:.4f} -> "
              f"{result.loss_curve[-1]:.4f}")
        print(json.dumps({"loss": result.loss_curve[-1], "params": result.params.tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
