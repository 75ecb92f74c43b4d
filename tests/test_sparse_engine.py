"""The engine on CSR rows in this process (one rank): every optimizer and regularizer
path against the same rows given dense, rounds that fall back to dense, and a feature
count whose dense rows would not fit in memory.

    $ python -m pytest -q tests/test_sparse_engine.py

The same comparisons at 1 to 4 ranks under mpiexec: ``test_sparse_engine_mpi.py``.
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

import sparse_training as st
from mpi_dml.parallel.comm import Comm

TOL = 1e-6


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


@pytest.fixture(scope="module")
def data():
    return st.rows()


def gap(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


@pytest.mark.parametrize("name", st.MINIBATCH_RUNS)
def test_sparse_rows_train_the_dense_rows_model(comm, data, name):
    sizes = []
    sparse = st.fit(comm, name, data=data, sizes=sizes)
    dense = st.fit(comm, name, data=data, dense=True)
    assert gap(sparse.params, dense.params) <= TOL
    # Every round exchanged and updated the touched rows only.
    assert len(sizes) == 16 and max(sizes) < sparse.model.size / 2
    assert sparse.history[-1]["train_loss"] == pytest.approx(dense.history[-1]["train_loss"],
                                                             rel=1e-9)
    assert sparse.final == pytest.approx(dense.final, rel=1e-9)


@pytest.mark.parametrize("name", ["sgd_decay_l1", "softmax_momentum"])
def test_rounds_touching_most_features_go_dense(comm, name):
    """Over 130 features a batch of 32 rows touches over half of them in some rounds
    and not in others: dense and compact rounds mix, and lazy rows are caught up
    before a dense round reads them."""
    data = st.rows(n_features=130, seed=1)
    sizes = []
    sparse = st.fit(comm, name, data=data, sizes=sizes)
    dense = st.fit(comm, name, data=data, dense=True)
    full = sparse.model.size
    assert min(sizes) < full and full in sizes
    assert gap(sparse.params, dense.params) <= TOL


def test_millions_of_features_cost_the_nonzeros(comm):
    """2**21 features: the rows given dense would take 4.7 GB; the run holds a few
    arrays of one value a feature (parameters, buffer, clocks, lookup table)."""
    n_features = 1 << 21
    data = st.rows(n_features=n_features, seed=2)
    tracemalloc.start()
    t0 = time.perf_counter()
    engine = st.fit(comm, "sgd_decay_l1", data=data, epochs=1, names=["f"] * n_features)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * n_features, peak
    assert seconds < 20
    assert np.isfinite(engine.params).all() and np.count_nonzero(engine.params) > 10
