"""The scikit-learn style estimators in one process: scikit-learn's own checks, clone,
Pipeline and GridSearchCV, DataFrames, float32 and float64, save and load, errors.

    $ python -m pytest -q tests/test_estimators.py

Expected values come from elsewhere: scikit-learn's checks and metrics, its
StandardScaler, plain NumPy replays of full-batch gradient descent, and files that
the command line reads. The same estimators at 1-4 ranks, against the command line,
are in test_estimators_mpi.py.
"""
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs, make_classification, make_regression
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import mpi_dml
from mpi_dml.api.estimators import (LinearRegression, LinearSVC, LogisticRegression,
                                    MLPClassifier, MLPRegressor)

ALL = [LinearRegression, LogisticRegression, LinearSVC, MLPClassifier, MLPRegressor]
# Checks expected to fail, with the reason for each: none, for every estimator.
EXPECTED_FAILURES = {}
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@parametrize_with_checks([cls() for cls in ALL],
                         expected_failed_checks=lambda est: EXPECTED_FAILURES.get(type(est), {}),
                         xfail_strict=True)
def test_scikit_learn_checks(estimator, check):
    check(estimator)


def blobs(n=120, k=3, offset=100.0, seed=0):
    x, y = make_blobs(n, n_features=4, centers=k, random_state=seed)
    return x + offset, y


# --- the algorithm, replayed in NumPy ------------------------------------------------------
def replay(x, y, loss, *, lr, alpha, epochs):
    """Full-batch gradient descent from zero on standardized features (mean loss +
    alpha/2 |w|^2), folded back to the raw features: (coef, intercept)."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / std
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(epochs):
        out = z @ w + b
        err = out - y if loss == "squared" else 1 / (1 + np.exp(-out)) - y
        w = w - lr * (z.T @ err / len(y) + alpha * w)
        b = b - lr * err.mean()
    return w / std, b - (mean / std) @ w


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_linear_regression_is_full_batch_gradient_descent(dtype, rtol):
    x, y = make_regression(150, 6, noise=1.0, random_state=1)
    x = x * [1, 10, 0.1, 3, 1, 2] + 7
    est = LinearRegression(solver="sgd", momentum=0.0, learning_rate_init=0.1, alpha=0.01,
                           batch_size=150, max_iter=30, tol=None, random_state=0)
    est.fit(x.astype(dtype), y)
    coef, intercept = replay(x, y, "squared", lr=0.1, alpha=0.01, epochs=30)
    assert est.coef_.dtype == dtype and est.predict(x.astype(dtype)).dtype == dtype
    np.testing.assert_allclose(est.coef_, coef, rtol=rtol)
    assert est.intercept_ == pytest.approx(intercept, rel=rtol)
    assert est.n_iter_ == 30 and len(est.loss_curve_) == 30


def test_logistic_regression_is_full_batch_gradient_descent():
    x, y = make_classification(120, 5, random_state=2)
    names = np.array(["cat", "dog"])
    labels = names[y]
    est = LogisticRegression(solver="sgd", momentum=0.0, learning_rate_init=0.5, alpha=1e-3,
                             batch_size=120, max_iter=20, tol=None, random_state=0)
    est.fit(x * 5 - 3, labels)
    coef, intercept = replay(x * 5 - 3, y, "logistic", lr=0.5, alpha=1e-3, epochs=20)
    np.testing.assert_allclose(est.coef_[0], coef, rtol=1e-10)
    np.testing.assert_allclose(est.intercept_, [intercept], rtol=1e-10)
    z = (x * 5 - 3) @ coef + intercept
    np.testing.assert_allclose(est.decision_function(x * 5 - 3), z, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(est.predict(x * 5 - 3), names[(z > 0).astype(int)])
    np.testing.assert_allclose(est.predict_proba(x * 5 - 3)[:, 1], 1 / (1 + np.exp(-z)),
                               rtol=1e-9)


def test_standardize_is_a_standard_scaler_in_front():
    x, y = blobs()
    inside = LogisticRegression(random_state=3, max_iter=5, tol=None,
                                standardize=True).fit(x, y)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(random_state=3, max_iter=5,
                                                              tol=None, standardize=False))
    pipe.fit(x, y)
    outside = pipe[-1]
    np.testing.assert_allclose(inside.coef_, outside.coef_ / pipe[0].scale_, rtol=1e-9)
    np.testing.assert_allclose(inside.predict_proba(x), pipe.predict_proba(x), rtol=1e-9)
    assert inside.score(x, y) == pipe.score(x, y) == accuracy_score(y, pipe.predict(x))


# --- scikit-learn's tools ---------------------------------------------------------------------
def test_clone_keeps_a_duplicated_communicator_by_reference():
    from mpi4py import MPI

    dup = MPI.COMM_WORLD.Dup()
    try:
        est = MLPClassifier(hidden_layer_sizes=(5,), comm=dup, max_iter=3)
        twin = clone(est)
        assert twin.comm is dup and twin is not est
        assert twin.get_params() == est.get_params()
        x, y = blobs()
        est.fit(x, y)
        copy = pickle.loads(pickle.dumps(est))  # a derived communicator does not travel
        assert copy.comm is None and est.comm is dup
        np.testing.assert_array_equal(copy.predict_proba(x), est.predict_proba(x))
        pipe = clone(make_pipeline(StandardScaler(), est))
        assert pipe.get_params()["mlpclassifier__comm"] is dup
        assert pipe.set_params(mlpclassifier__comm=MPI.COMM_SELF)[-1].comm is MPI.COMM_SELF
    finally:
        dup.Free()


def test_grid_search_scores_each_candidate_as_scikit_learn_would():
    x, y = blobs(n=90)
    grid = {"learning_rate_init": [0.001, 0.05], "alpha": [0.0, 0.1]}
    base = LogisticRegression(max_iter=4, random_state=1, tol=None)
    search = GridSearchCV(base, grid, cv=KFold(3), n_jobs=1).fit(x, y)
    for params, mean in zip(search.cv_results_["params"],
                            search.cv_results_["mean_test_score"]):
        folds = []
        for train, test in KFold(3).split(x):
            est = clone(base).set_params(**params).fit(x[train], y[train])
            folds.append(accuracy_score(y[test], est.predict(x[test])))
        assert mean == pytest.approx(np.mean(folds), abs=1e-15)
    assert search.best_estimator_.get_params()["learning_rate_init"] == \
        search.best_params_["learning_rate_init"]


@pytest.mark.parametrize("cls", [LogisticRegression, MLPRegressor])
def test_score_is_scikit_learns_metric_with_weights(cls):
    x, y = blobs(n=60)
    w = np.random.default_rng(0).uniform(0, 2, size=len(y))
    est = cls(max_iter=10, random_state=0).fit(x, y)
    metric = accuracy_score if cls is LogisticRegression else r2_score
    got = est.score(x, y, sample_weight=w)
    assert type(got) is float
    assert got == pytest.approx(metric(y, est.predict(x), sample_weight=w), rel=1e-12)


# --- input ----------------------------------------------------------------------------------
def test_dataframes_give_feature_names_and_the_array_model():
    pd = pytest.importorskip("pandas")
    x, y = blobs()
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    labels = pd.Series(np.array(["x", "y", "z"])[y], name="kind")
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(frame, labels)
    plain = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(x, y)
    np.testing.assert_array_equal(est.feature_names_in_, ["a", "b", "c", "d"])
    assert not hasattr(plain, "feature_names_in_")
    for a, b in zip(est.coefs_, plain.coefs_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(est.classes_, ["x", "y", "z"])
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        est.predict(frame[["b", "a", "c", "d"]])
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        est.predict(x)


def test_integer_input_trains_in_float64_and_float32_stays_float32():
    x, y = blobs(offset=0)
    ints = LogisticRegression(max_iter=2, random_state=0).fit(np.round(x).astype(np.int32), y)
    assert ints.coef_.dtype == np.float64 and ints._meta["config"]["dtype"] == "float64"
    single = LogisticRegression(max_iter=2, random_state=0).fit(x.astype(np.float32), y)
    assert single.coef_.dtype == np.float32 and single._meta["config"]["dtype"] == "float32"
    assert single.predict_proba(x).dtype == np.float32


def test_random_state_seeds_and_leaves_numpys_generator_alone():
    x, y = blobs()
    state = np.random.get_state()[1].copy()
    fits = [MLPClassifier(hidden_layer_sizes=(3,), max_iter=1).fit(x, y) for _ in range(2)]
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert fits[0]._meta["config"]["seed"] != fits[1]._meta["config"]["seed"]
    seven = MLPClassifier(hidden_layer_sizes=(3,), max_iter=1, random_state=7).fit(x, y)
    assert seven._meta["config"]["seed"] == 7
    drawn = MLPClassifier(hidden_layer_sizes=(3,), max_iter=1,
                          random_state=np.random.RandomState(0)).fit(x, y)
    assert drawn._meta["config"]["seed"] == np.random.RandomState(0).randint(2**31 - 1)


# --- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("params, kind, message", [
    ({"learning_rate_init": 0}, ValueError,
     r"The 'learning_rate_init' parameter of LogisticRegression must be > 0. Got 0.0"),
    ({"max_iter": "ten"}, TypeError,
     r"The 'max_iter' parameter of LogisticRegression must be an int. Got 'ten'"),
    ({"solver": "newton"}, ValueError, r"The 'solver' parameter of LogisticRegression must "
                                       r"be one of sgd, adam, adamw, lbfgs. Got 'newton'"),
    ({"batch_size": 0}, ValueError, r"'batch_size' parameter of LogisticRegression must "
                                    r"be >= 1"),
    ({"random_state": -1}, ValueError, r"'random_state' parameter of LogisticRegression"),
    ({"momentum": 1.5, "solver": "sgd"}, ValueError, r"'momentum' parameter .* \[0, 1\)"),
])
def test_a_bad_parameter_is_named(params, kind, message):
    x, y = blobs(n=20)
    with pytest.raises(kind, match=message):
        LogisticRegression(**params).fit(x, y)


def test_errors_of_input():
    x, y = blobs(n=30)
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        LinearSVC().fit(x, y)
    with pytest.raises(ValueError, match="only one class: 'a'"):
        LogisticRegression().fit(x, np.full(30, "a"))
    with pytest.raises(ValueError, match="Found 0 samples on every rank"):
        LinearRegression().fit(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(x)
    with pytest.raises(ValueError, match="y should be a 1d array"):
        MLPRegressor().fit(x, np.column_stack([y, y]))
    assert not hasattr(LinearSVC(), "predict_proba")


# --- model folders ------------------------------------------------------------------------------
def test_save_then_load_gives_the_same_estimator(tmp_path):
    pd = pytest.importorskip("pandas")
    x, y = blobs()
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    est = LogisticRegression(max_iter=5, random_state=0).fit(frame, np.array(["p", "q", "r"])[y])
    est.save(tmp_path / "m")
    back = mpi_dml.load(tmp_path / "m")
    assert type(back) is LogisticRegression
    assert back.get_params() == est.get_params()
    np.testing.assert_array_equal(back.classes_, ["p", "q", "r"])
    np.testing.assert_array_equal(back.feature_names_in_, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(back.predict_proba(frame), est.predict_proba(frame))
    np.testing.assert_array_equal(back.coef_, est.coef_)
    assert back.loss_curve_ == est.loss_curve_ and back.n_iter_ == est.n_iter_
    with pytest.raises(ValueError, match="must not name a feature. Got 'a'"):
        est.save(tmp_path / "n", label_column="a")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="does not match model.json"):
        mpi_dml.load(tmp_path / "m")


def test_the_api_leaves_the_process_alone(tmp_path, capfd):
    from threadpoolctl import threadpool_info

    before = (dict(os.environ), sys.excepthook, signal.getsignal(signal.SIGTERM),
              signal.getsignal(signal.SIGUSR1), threadpool_info())
    x, y = blobs()
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, verbose=True).fit(x, y)
    est.score(x, y)
    est.save(tmp_path / "m")
    mpi_dml.load(tmp_path / "m")
    after = (dict(os.environ), sys.excepthook, signal.getsignal(signal.SIGTERM),
             signal.getsignal(signal.SIGUSR1), threadpool_info())
    assert after == before
    assert capfd.readouterr().err.count("epoch ") == 2  # verbose: one line per epoch


def test_import_loads_nothing_until_an_estimator_is_asked_for():
    code = ("import sys, mpi_dml; heavy = ('mpi4py', 'numpy', 'sklearn');"
            "print(any(m in sys.modules for m in heavy));"
            "mpi_dml.LinearSVC; print('sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_a_feature_named_like_the_internal_label_stays_a_feature():
    """The label's column inside the engine's table takes a name no feature has."""
    pd = pytest.importorskip("pandas")
    from mpi_dml import LinearRegression
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    y = X @ np.array([2.0, -3.0]) + 1.0
    frame = pd.DataFrame(X, columns=["a", "__label__"])
    reg = LinearRegression(random_state=0).fit(frame, y)
    assert reg.n_features_in_ == 2 and list(reg.feature_names_in_) == ["a", "__label__"]
    # The same model as with any other name for that column.
    plain = LinearRegression(random_state=0).fit(pd.DataFrame(X, columns=["a", "b"]), y)
    np.testing.assert_array_equal(reg.coef_, plain.coef_)
    np.testing.assert_array_equal(reg.predict(frame), plain.predict(frame.set_axis(["a", "b"], axis=1)))
