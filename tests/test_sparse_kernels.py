"""The CSR kernels (``kernels/sparse.py``) against SciPy's own sparse products and a
NumPy replay of the dense SGD update.

    $ python -m pytest -q tests/test_sparse_kernels.py
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse

from mpi_dml import kernels
from mpi_dml.kernels import sparse

REF = kernels.get("reference")


def csr(rows, cols, *, dtype, index, density=0.05, seed=0, empty=(0,)):
    """A random CSR matrix with the given index dtype, some rows left empty."""
    rng = np.random.default_rng(seed)
    x = scipy.sparse.random(rows, cols, density=density, format="csr", dtype=np.float64,
                            random_state=rng)
    x.data = rng.normal(size=x.data.size)
    x = x.tolil()
    for r in empty:
        if r < rows:
            x.rows[r], x.data[r] = [], []
    x = x.tocsr().astype(dtype)
    x.sort_indices()
    x.indices, x.indptr = x.indices.astype(index), x.indptr.astype(index)
    return x


def tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


CASES = [(d, i) for d in (np.float32, np.float64) for i in (np.int32, np.int64)]


@pytest.mark.parametrize("dtype,index", CASES)
@pytest.mark.parametrize("rows", [0, 1, 37])
def test_products_match_scipy(dtype, index, rows):
    x = csr(rows, 300, dtype=dtype, index=index, empty=(0, 5, 6))
    assert x.indices.dtype == index
    rng = np.random.default_rng(1)
    w = rng.normal(size=(300, 4)).astype(dtype)
    d = rng.normal(size=(rows, 4)).astype(dtype)
    z = sparse.matmul(x, w)
    assert z.dtype == dtype and z.shape == (rows, 4)
    np.testing.assert_allclose(z, x @ w, **tol(dtype))
    g = sparse.t_matmul(x, d, 300)
    np.testing.assert_allclose(g, (x.T @ d), **tol(dtype))
    # The compact form: only the features the batch touches, in sorted order.
    keys = sparse.touched(x)
    np.testing.assert_array_equal(keys, np.flatnonzero(np.diff(x.tocsc().indptr)))
    pos = sparse.positions(keys, x.indices)
    compact = sparse.t_matmul(x, d, len(keys), columns=pos)
    np.testing.assert_allclose(compact, (x.T @ d)[keys], **tol(dtype))
    # Compact rows for a wider set (another rank's features too) are zero where unused.
    wider = np.union1d(keys, [0, 7, 299])
    wide = sparse.t_matmul(x, d, len(wider), columns=sparse.positions(wider, x.indices))
    np.testing.assert_allclose(wide, (x.T @ d)[wider], **tol(dtype))


def test_outputs_are_overwritten_not_added_to():
    x = csr(9, 50, dtype=np.float64, index=np.int32)
    w, d = np.ones((50, 2)), np.ones((9, 2))
    out, gout = np.full((9, 2), 7.0), np.full((50, 2), 7.0)
    sparse.matmul(x, w, out=out)
    sparse.t_matmul(x, d, 50, out=gout)
    np.testing.assert_allclose(out, x @ w)
    np.testing.assert_allclose(gout, x.T @ d)


def test_results_do_not_depend_on_the_thread_count():
    x = csr(400, 5000, dtype=np.float32, index=np.int32, density=0.02, seed=3)
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5000, 3)).astype(np.float32)
    d = rng.normal(size=(400, 3)).astype(np.float32)
    before = numba.get_num_threads()
    got = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            got.append((sparse.matmul(x, w), sparse.t_matmul(x, d, 5000)))
    finally:
        numba.set_num_threads(before)
    for z, g in got[1:]:
        assert np.array_equal(z, got[0][0]) and np.array_equal(g, got[0][1])
    # And the summation order is the serial one: row by row.
    serial = np.zeros((5000, 3), dtype=np.float32)
    for i in range(400):
        for p in range(x.indptr[i], x.indptr[i + 1]):
            serial[x.indices[p]] += x.data[p] * d[i]
    assert np.array_equal(got[0][1], serial)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay,l1", [(0.0, 0.0), (0.05, 0.0), (0.0, 0.02), (0.05, 0.02)])
def test_lazy_sgd_replays_the_dense_update(dtype, weight_decay, l1):
    """Rows updated only when touched, with the steps they missed caught up in closed
    form, equal the dense SGD update run every step on every row (zero gradient where
    untouched)."""
    rng = np.random.default_rng(5)
    n, k, steps = 40, 3, 12
    dense = rng.normal(size=(n, k)).astype(dtype)
    lazy = dense.copy()
    mask = np.ones(n * k, dtype=np.uint8)
    last = np.zeros(n, dtype=np.int64)
    hist_a, hist_s = [1.0], [0.0]
    for t in range(1, steps + 1):
        lr = 0.3 / t  # a schedule: the history carries each step's rate
        rows = np.sort(rng.choice(n, size=int(rng.integers(0, 6)), replace=False))
        g = rng.normal(size=(len(rows), k)).astype(dtype)
        full = np.zeros((n, k), dtype=dtype)
        full[rows] = g
        flat = dense.reshape(-1)
        REF.sgd_update(flat, full.reshape(-1), np.zeros_like(flat), lr, 0.0, False,
                       weight_decay, l1, mask, 0.5)
        sparse.lazy_sgd_rows(lazy, rows, g, last, np.array(hist_a), np.array(hist_s), t, lr,
                             weight_decay, l1, 0.5)
        a = hist_a[-1] * (1 - lr * weight_decay)
        hist_a.append(a)
        hist_s.append(hist_s[-1] + lr * l1 / a)
        assert (last[rows] == t).all()
    sparse.lazy_catch_up(lazy, last, np.array(hist_a), np.array(hist_s), steps)
    assert (last == steps).all()
    np.testing.assert_allclose(lazy, dense, **tol(dtype))
    if l1:
        assert (dense == 0).any()  # the threshold was reached on some weights
        np.testing.assert_array_equal(lazy == 0, dense == 0)


def test_huge_feature_counts_cost_only_the_nonzeros():
    """2**26 features: a dense batch of these rows would take 200 GB."""
    n_features = 1 << 26
    rng = np.random.default_rng(0)
    rows = 400
    indptr = np.arange(0, 40 * rows + 1, 40, dtype=np.int64)
    indices = np.sort(rng.integers(0, n_features, size=(rows, 40)), axis=1).reshape(-1)
    x = scipy.sparse.csr_matrix((rng.normal(size=indices.size), indices, indptr),
                                shape=(rows, n_features))
    d = rng.normal(size=(rows, 2))
    keys = sparse.touched(x)
    g = sparse.t_matmul(x, d, len(keys), columns=sparse.positions(keys, x.indices))
    want = np.zeros((len(keys), 2))
    np.add.at(want, np.searchsorted(keys, x.indices), x.data[:, None] * np.repeat(d, 40, axis=0))
    np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


def test_other_scipy_formats_are_taken_as_csr():
    x = csr(11, 40, dtype=np.float64, index=np.int32)
    w, d = np.ones((40, 2)), np.ones((11, 2))
    for other in (x.tocsc(), x.tocoo()):
        np.testing.assert_allclose(sparse.matmul(other, w), x @ w)
        np.testing.assert_allclose(sparse.t_matmul(other, d, 40), x.T @ d)


def test_compact_columns_through_the_lookup_table_match_a_search():
    x = csr(50, 3000, dtype=np.float32, index=np.int64, density=0.01, seed=8)
    keys = np.union1d(sparse.touched(x), [1, 2999])
    np.testing.assert_array_equal(sparse.positions(keys, x.indices, np, 3000),
                                  np.searchsorted(keys, x.indices))
    np.testing.assert_array_equal(sparse.sorted_unique(np.array([5, 1, 5, 3, 1])), [1, 3, 5])
    assert sparse.sorted_unique(np.array([], dtype=np.int32)).size == 0
