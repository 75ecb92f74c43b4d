"""The estimators on SciPy sparse X: trained on as CSR, never densified, to the model
the same rows give dense.

    $ .venv/bin/python -m pytest -q tests/test_estimators_sparse.py
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import mpi_dml

sklearn = pytest.importorskip("sklearn")
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def rows(n=400, d=30, seed=0):
    rng = np.random.default_rng(seed)
    x = sp.random(n, d, density=0.15, format="csr", random_state=rng,
                  data_rvs=lambda k: rng.uniform(0.5, 3.0, k))
    w = rng.normal(size=d)
    margin = x @ w
    return x, (margin > np.median(margin)).astype(int), margin


@pytest.mark.parametrize("make", [
    lambda: mpi_dml.LogisticRegression(max_iter=3, standardize=False, random_state=0),
    lambda: mpi_dml.LinearSVC(max_iter=3, standardize=False, random_state=0),
    lambda: mpi_dml.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, standardize=False,
                                  random_state=0),
], ids=["logistic", "svm", "mlp"])
def test_sparse_x_trains_the_dense_model(make):
    x, y, _ = rows()
    dense = make().fit(x.toarray(), y)
    sparse = make().fit(x, y)
    np.testing.assert_allclose(sparse.decision_function(x), dense.decision_function(x.toarray()),
                               rtol=0, atol=1e-6)
    # Predicting from sparse rows and from the same rows dense agree too.
    np.testing.assert_allclose(sparse.decision_function(x),
                               sparse.decision_function(x.toarray()), rtol=0, atol=1e-9)


def test_sparse_regression_and_other_sparse_formats():
    x, _, margin = rows(seed=1)
    dense = mpi_dml.LinearRegression(max_iter=3, standardize=False, random_state=0)
    dense.fit(x.toarray(), margin)
    for given in (x.tocsc(), x.tocoo()):
        est = mpi_dml.LinearRegression(max_iter=3, standardize=False, random_state=0)
        est.fit(given, margin)
        np.testing.assert_allclose(est.coef_, dense.coef_, rtol=0, atol=1e-6)


def test_standardize_scales_sparse_rows_without_centring():
    """As scikit-learn's StandardScaler(with_mean=False) then an unscaled fit."""
    from sklearn.preprocessing import StandardScaler

    x, y, _ = rows(seed=2)
    scaler = StandardScaler(with_mean=False).fit(x)
    reference = mpi_dml.LogisticRegression(max_iter=3, standardize=False, random_state=0)
    reference.fit(scaler.transform(x), y)
    est = mpi_dml.LogisticRegression(max_iter=3, standardize=True, random_state=0).fit(x, y)
    np.testing.assert_allclose(est.predict_proba(x),
                               reference.predict_proba(scaler.transform(x)), rtol=0, atol=1e-6)
