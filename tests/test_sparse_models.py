"""Every model on CSR rows against the same model on the same rows given dense (NumPy
products), including the compact first-layer gradient of the touched features.

    $ python -m pytest -q tests/test_sparse_models.py
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from mpi_dml import kernels
from mpi_dml.kernels import sparse
from mpi_dml.models import build_model, labels_for_loss

KINDS = [("linear", "regression", ()), ("logistic", "classification", ()),
         ("svm", "classification", ()), ("softmax", "classification", ()),
         ("mlp", "classification", (6,)), ("mlp", "regression", (5, 4))]


def batch(rows, n_features, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = scipy.sparse.random(rows, n_features, density=0.03, format="csr", dtype=np.float64,
                            random_state=rng)
    x.data = rng.normal(size=x.data.size)
    x = x.astype(dtype)
    x.indices, x.indptr = x.indices.astype(np.int32), x.indptr.astype(np.int32)
    x.sort_indices()
    return x, rng.integers(0, 3, rows).astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,task,hidden", KINDS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_csr_rows_give_the_dense_rows_results(kind, task, hidden, dtype, backend):
    k = kernels.get(backend)
    n_features = 200
    model = build_model(kind, task, n_features, 3, hidden, "tanh")
    x, y_raw = batch(23, n_features, dtype)
    if model.loss in ("logistic", "hinge"):
        y_raw = (y_raw > 0).astype(np.float64)
    y = labels_for_loss(model, y_raw, dtype)
    rng = np.random.default_rng(1)
    params = rng.normal(scale=0.3, size=model.size).astype(dtype)
    dense_x = x.toarray()  # the test's own copy to compare with; the model never makes one
    tol = {"rtol": 2e-4, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}

    np.testing.assert_allclose(model.predict_raw(params, x, k),
                               model.predict_raw(params, dense_x, k), **tol)
    got_eval, want_eval = model.evaluate(params, x, y, k), model.evaluate(params, dense_x, y, k)
    assert got_eval[:2] == pytest.approx(want_eval[:2], rel=tol["rtol"])

    want = np.zeros(model.size, dtype=dtype)
    want_sums = model.loss_grad(params, want, dense_x, y, k)
    got = np.full(model.size, 9.0, dtype=dtype)  # overwritten, not added to
    assert model.loss_grad(params, got, x, y, k) == pytest.approx(want_sums, rel=tol["rtol"])
    np.testing.assert_allclose(got, want, **tol)

    # Compact: the first layer's rows of the touched features (plus one untouched), and
    # every other parameter as in the dense layout.
    rows = np.union1d(sparse.touched(x), [n_features - 1])
    compact = np.full(model.compact_size(len(rows)), 9.0, dtype=dtype)
    totals = np.zeros(3)
    model.loss_grad(params, compact, x, y, k, totals=totals, first_rows=rows)
    assert totals == pytest.approx([*want_sums, 23], rel=tol["rtol"])
    offset, size = model.first_weight()
    n_out = model.layers[0].n_out
    np.testing.assert_allclose(compact[:offset], want[:offset], **tol)
    np.testing.assert_allclose(compact[offset:offset + len(rows) * n_out].reshape(-1, n_out),
                               want[offset:offset + size].reshape(-1, n_out)[rows], **tol)
    np.testing.assert_allclose(compact[offset + len(rows) * n_out:], want[offset + size:], **tol)


def test_a_logistic_gradient_on_csr_rows_is_the_formula():
    """X.T (sigmoid(X w + b) - y), summed: the formula written out with SciPy."""
    model = build_model("logistic", "classification", 50, 2)
    x, y = batch(30, 50, np.float64, seed=4)
    y = (y > 0).astype(np.float64)
    rng = np.random.default_rng(0)
    params = rng.normal(size=model.size)
    (w, b), = model.views(params)
    grads = np.zeros(model.size)
    model.loss_grad(params, grads, x, y, kernels.get("cpu"))
    residual = 1 / (1 + np.exp(-(x @ w[:, 0] + b[0]))) - y
    (gw, gb), = model.views(grads)
    np.testing.assert_allclose(gw[:, 0], x.T @ residual, rtol=1e-12)
    assert gb[0] == pytest.approx(residual.sum(), rel=1e-12)
