"""Run under mpiexec by tests/test_custom_model_mpi.py: a custom model (Huber regression,
written here against ``mpi_dml.api.custom``) trained with ``mpi_dml.train``.

    $ mpiexec -n 3 python tests/mpi_scripts/custom_train.py OUT [--epochs 4]
          [--checkpoint-dir D] [--checkpoint-every K] [--resume auto] [--setup]
          [--signal-rank R --signal-call C] [--nan-row G] [--uneven-lr]

Every rank makes its own rows of one global data set (``make_rows``: the same rows for
any number of ranks) and writes what it got to ``OUT.rank<R>.json``: the parameters,
loss curve and epoch count, or the message of the error that stopped it, which is then
raised again (with ``--setup``, ``mpi_dml.setup_process()`` turns it into the exit
status: 75 for a stop on a signal, 3 for a non-finite gradient).

``--signal-rank R --signal-call C``: rank R sends itself SIGTERM in its C-th call of
``loss_grad`` (the first call is ``train``'s check of the model on one row).
``--nan-row G``: a last feature column is 1 on global row G only, and the model's
gradient is NaN for any block that holds it.
``--uneven-lr``: rank R passes a learning rate of 0.05 * (R + 1), which train refuses.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import numpy as np

import mpi_dml
from mpi_dml.api.custom import CustomModel

N_ROWS, N_FEATURES, SEED = 600, 4, 11
SETTINGS = dict(solver="sgd", learning_rate_init=0.05, momentum=0.9, nesterovs_momentum=True,
                alpha=1e-3, l1=1e-4, batch_size=64, random_state=3, shards=64)


def make_rows(lo: int, hi: int, nan_row: int | None = None):
    """Global rows [lo, hi) of the data set; each block of 100 rows has its own seed, so
    a rank makes only the blocks its rows are in."""
    first = lo // 100
    xs, ys = [np.empty((0, N_FEATURES))], [np.empty(0)]
    for b in range(first, -(-hi // 100)):
        rng = np.random.default_rng([SEED, b])
        x = rng.normal(size=(100, N_FEATURES)) * [1.0, 2.0, 0.5, 1.5]
        noise = rng.standard_t(df=2, size=100)  # heavy tails: where Huber differs from LS
        xs.append(x)
        ys.append(x @ [0.5, -0.25, 1.0, 0.75] + 2.0 + noise)
    x = np.concatenate(xs)[lo - 100 * first:hi - 100 * first]
    y = np.concatenate(ys)[lo - 100 * first:hi - 100 * first]
    if nan_row is not None:
        x = np.column_stack([x, np.arange(lo, hi) == nan_row]).astype(float)
    return x, y


class Huber(CustomModel):
    """Huber regression: weights, then the intercept; L2 and L1 on the weights only."""

    def __init__(self, n_features: int, delta: float = 1.0, nan_flag: bool = False):
        self.n_features, self.delta, self.nan_flag = n_features, delta, nan_flag
        self.size = n_features + 1
        self.calls = 0
        self.on_call = None

    def init(self, params, seed):
        rng = np.random.default_rng(seed)
        params[:-1] = rng.normal(scale=0.1, size=self.n_features)
        params[-1] = 0.0

    def decay_mask(self):
        mask = np.ones(self.size, dtype=np.uint8)
        mask[-1] = 0
        return mask

    def loss_grad(self, params, grad, X, y):
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        x = X[:, :self.n_features]
        r = x @ params[:-1] + params[-1] - y
        small = np.abs(r) <= self.delta
        d = np.where(small, r, self.delta * np.sign(r))  # dLoss/dprediction
        grad[:-1] = x.T @ d
        grad[-1] = d.sum()
        if self.nan_flag and X[:, -1].any():
            grad[0] = np.nan
        return float(np.where(small, 0.5 * r * r, self.delta * (np.abs(r) - 0.5 * self.delta)).sum())

    def predict(self, params, X):
        return X[:, :self.n_features] @ params[:-1] + params[-1]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--resume")
    parser.add_argument("--setup", action="store_true")
    parser.add_argument("--signal-rank", type=int)
    parser.add_argument("--signal-call", type=int)
    parser.add_argument("--nan-row", type=int)
    parser.add_argument("--uneven-lr", action="store_true")
    args = parser.parse_args(argv)

    from mpi4py import MPI  # the script's own use: which rows are this rank's
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    if args.setup:
        mpi_dml.setup_process()
    lo, hi = rank * N_ROWS // size, (rank + 1) * N_ROWS // size
    x, y = make_rows(lo, hi, args.nan_row)
    model = Huber(N_FEATURES, nan_flag=args.nan_row is not None)
    if args.signal_rank == rank:
        model.on_call = lambda k: k == args.signal_call and os.kill(os.getpid(), signal.SIGTERM)
    path = f"{args.out}.rank{rank}.json"
    settings = dict(SETTINGS)
    if args.uneven_lr:
        settings["learning_rate_init"] = 0.05 * (rank + 1)
    try:
        result = mpi_dml.train(model, x, y, max_iter=args.epochs,
                               checkpoint_dir=args.checkpoint_dir,
                               checkpoint_every=args.checkpoint_every, resume=args.resume,
                               **settings)
    except Exception as exc:
        with open(path, "w") as fh:
            json.dump({"error": type(exc).__name__, "message": str(exc)}, fh)
        raise
    with open(path, "w") as fh:
        json.dump({"params": result.params.tolist(), "loss_curve": result.loss_curve,
                   "n_iter": result.n_iter, "size": size}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
