"""Sparse training data and runs shared by the sparse engine tests (in process) and
``mpi_scripts/sparse_train.py`` (under mpiexec): CSR rows built from fixed seeds, the
rank's share of them as ``TrainingData``, and one engine run on them as CSR or as the
same rows made dense (today's dense path, the reference).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse

from mpi_dml.algorithms import make_algorithm
from mpi_dml.config import TrainConfig
from mpi_dml.data import sharding
from mpi_dml.data.labels import Split
from mpi_dml.data.training import TrainingData
from mpi_dml.engine import Engine

N_ROWS, N_VAL, N_FEATURES, SHARDS = 240, 40, 3000, 12
COMMON = {"dtype": "float64", "batch_size": 32, "epochs": 2, "shards": SHARDS, "seed": 3,
          "progress": "none", "check_every": 5, "label_column": "label"}
# name -> (model settings, solver settings): every optimizer and regularizer path.
RUNS = {
    "sgd": {"model": "logistic", "lr": 0.5},
    "sgd_decay_l1": {"model": "logistic", "lr": 0.5, "weight_decay": 0.02, "l1": 0.002,
                     "schedule": "cosine", "warmup_steps": 3},
    "linear_l1": {"model": "linear", "lr": 0.05, "l1": 0.01},
    "svm_decay": {"model": "svm", "lr": 0.2, "weight_decay": 0.05},
    "softmax_momentum": {"model": "softmax", "lr": 0.3, "momentum": 0.9, "nesterov": True,
                         "weight_decay": 0.01},
    "logistic_adam": {"model": "logistic", "optimizer": "adam", "lr": 0.05,
                      "weight_decay": 0.01, "l1": 0.001},
    "mlp_sgd_decay": {"model": "mlp", "hidden": (4,), "activation": "tanh", "lr": 0.2,
                      "weight_decay": 0.01, "l1": 0.001},
    "mlp_adamw": {"model": "mlp", "hidden": (3,), "activation": "relu",
                  "optimizer": "adamw", "lr": 0.02, "weight_decay": 0.1},
    # Full-batch L-BFGS, OWL-QN, and L-BFGS after a warm start of (compact) SGD epochs.
    "logistic_lbfgs": {"model": "logistic", "optimizer": "lbfgs", "weight_decay": 0.02,
                       "tol": 1e-12},
    "softmax_owlqn": {"model": "softmax", "optimizer": "lbfgs", "weight_decay": 0.01,
                      "l1": 0.002, "tol": 1e-12},
    "linear_lbfgs_warm": {"model": "linear", "optimizer": "lbfgs", "weight_decay": 0.05,
                          "warm_start_epochs": 1, "lr": 0.05, "tol": 1e-12},
}
MINIBATCH_RUNS = sorted(name for name, run in RUNS.items() if run.get("optimizer") != "lbfgs")


def rows(n=N_ROWS + N_VAL, n_features=N_FEATURES, seed=0):
    """(CSR float64 rows with int32 indices, binary labels, 3-class labels, targets):
    6 to 10 nonzeros a row over features drawn with a long tail, as in text."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(6, 11, size=n)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    cols = []
    for c in counts:
        picked = set()
        while len(picked) < c:
            picked.add(int(min(rng.zipf(1.3) - 1, n_features - 1)))
        cols.append(sorted(picked))
    indices = np.concatenate(cols).astype(np.int32)
    x = scipy.sparse.csr_matrix((rng.normal(size=indices.size), indices, indptr),
                                shape=(n, n_features))
    truth = rng.normal(size=(n_features, 3)) * (rng.random((n_features, 1)) < 0.3)
    z = x @ truth
    return x, (z[:, 0] > 0).astype(np.float64), z.argmax(axis=1).astype(np.float64), z[:, 1]


def labels_for(model, binary, classes, targets):
    """The labels of ``rows`` a model kind trains on."""
    if model == "linear":
        return targets
    return classes if model in ("softmax", "mlp") else binary


def training_data(x, y, rank, size, *, dense=False, names=None) -> TrainingData:
    """The rank's share of the first N_ROWS rows (whole virtual shards, as the data plan
    has them) and a chunk of the last N_VAL as validation."""
    bounds = sharding.shard_bounds(N_ROWS, SHARDS)
    s0, s1 = sharding.owned_shards(SHARDS, rank, size)
    lo, hi = int(bounds[s0]), int(bounds[s1])
    vlo, vhi = sharding.chunk(N_VAL, rank, size)
    train_x, val_x = x[lo:hi], x[N_ROWS + vlo:N_ROWS + vhi]
    if dense:
        train_x, val_x = train_x.toarray(), val_x.toarray()
    n_classes = 0 if not np.all(y == np.round(y)) else max(int(y.max()) + 1, 2)
    names = names or [f"f{i}" for i in range(x.shape[1])]
    return TrainingData(Split(train_x, y[lo:hi]), Split(val_x, y[N_ROWS + vlo:N_ROWS + vhi]),
                        names, n_classes, np.diff(bounds), np.arange(s0, s1), N_ROWS, N_VAL)


def counting(sizes):
    """An algorithm factory that records every round's buffer size in ``sizes``."""
    def make(cfg, model, dev, params, *, n_train):
        algorithm = make_algorithm(cfg, model, dev, params, n_train=n_train)
        plain = algorithm.round_size

        def round_size(request, union):
            n = plain(request, union)
            sizes.append(n)
            return n
        algorithm.round_size = round_size
        return algorithm
    return make


def fit(comm, name, *, dense=False, data=None, sizes=None, names=None, device=None,
        **runtime):
    """Collective: run ``name`` of ``RUNS`` on this rank's rows; the finished engine."""
    settings = {**COMMON, **RUNS[name], **runtime}
    x, binary, classes, targets = data or rows()
    y = labels_for(settings["model"], binary, classes, targets)
    cfg = TrainConfig(**settings)
    share = training_data(x, y, comm.rank, comm.size, dense=dense, names=names)
    engine = Engine(cfg, comm=comm, data=share, device=device,
                    algorithm=counting(sizes if sizes is not None else []), process=False)
    engine.final = engine.fit()
    return engine
