"""The linear estimators on full-batch L-BFGS reach scikit-learn's and SciPy's optima
on real data; their parameters map onto the config as documented.

    $ .venv/bin/python -m pytest -q tests/test_estimators_lbfgs.py

Every comparison is of the OBJECTIVE, computed here in NumPy (``convex_reference``)
from the returned ``coef_`` and ``intercept_``, against the objective of an independent
solution at the same penalty: scikit-learn's LogisticRegression and Ridge, SciPy's
L-BFGS-B where scikit-learn solves another problem. The data are scikit-learn's
bundled sets, standardized here beforehand so the problems are well conditioned, in
float64. One mpiexec launch at 3 ranks, with uneven rows per rank, shows that the rank
count does not change the optimum.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

import convex_reference as ref
from conftest import run_mpi
from mpi_dml.api.estimators import (LinearRegression, LinearSVC, LogisticRegression,
                                    MLPClassifier)
from mpi_dml.api.est_params import check_params, params_from_config, train_config
from mpi_dml.config import LBFGS_TOL

RTOL = 1e-7          # what the estimators must reach, relative to the reference optimum
RANKS_RTOL = 1e-9    # 3 ranks against 1 rank and against the reference
SCRIPT = Path(__file__).parent / "mpi_scripts" / "lbfgs_estimators.py"
# The penalties of the acceptance cases (alpha = 1 / (C * n) where C is given).
ELASTIC = ref.ELASTIC_NET
SVM_ALPHA = 1e-2


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Two BLAS threads on two cores shared with other jobs run 100 times slower."""
    with threadpool_limits(1):
        yield


@functools.cache
def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return ref.standardized(data.data), data.target


@functools.cache
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return ref.standardized(data.data), data.target


@functools.cache
def diabetes():
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return ref.standardized(data.data), data.target


# name -> (data, the estimator, our objective at its coef_/intercept_, the reference's)
def _logistic_l2():
    x, y = breast_cancer()
    alpha = 1.0 / len(x)  # C = 1
    return (x, y, LogisticRegression(C=1.0),
            lambda c, b: ref.logistic_objective(x, y, c, b, alpha),
            lambda: ref.sklearn_logistic(x, y, alpha))


def _softmax_l2():
    x, y = digits()
    alpha = 1.0 / (0.1 * len(x))  # C = 0.1
    return (x, y, LogisticRegression(C=0.1),
            lambda c, b: ref.softmax_objective(x, y, c, b, alpha),
            lambda: ref.sklearn_logistic(x, y, alpha))


def _ridge():
    x, y = diabetes()
    a = 10.0  # Ridge's alpha: ||y - X w - b||^2 + a ||w||^2 is 2 n times ours
    return (x, y, LinearRegression(alpha=a / len(x)),
            lambda c, b: ref.squared_objective(x, y, c, b, a / len(x)),
            lambda: ref.sklearn_ridge(x, y, a / len(x)))


def _elastic_net():
    x, y = breast_cancer()
    return (x, y, LogisticRegression(**ELASTIC),
            lambda c, b: ref.logistic_objective(x, y, c, b, **ELASTIC),
            lambda: ref.scipy_elastic_net_logistic(x, y, **ELASTIC))


def _squared_hinge():
    x, y = breast_cancer()
    return (x, y, LinearSVC(C=1.0 / (SVM_ALPHA * len(x))),
            lambda c, b: ref.squared_hinge_objective(x, y, c, b, SVM_ALPHA),
            lambda: ref.scipy_squared_hinge(x, y, SVM_ALPHA))


CASES = {"logistic_l2": _logistic_l2, "softmax_l2": _softmax_l2, "ridge": _ridge,
         "elastic_net_logistic": _elastic_net, "squared_hinge_svm": _squared_hinge}


@pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("case", list(CASES))
def test_the_default_solver_reaches_the_reference_optimum(case):
    x, y, est, objective, solve = CASES[case]()
    est.fit(x, y)
    ours, theirs = objective(est.coef_, est.intercept_), objective(*solve())
    assert ref.relative_gap(ours, theirs) < RTOL, (ours, theirs)
    # The curve is L-BFGS's objective per iteration, ending at the returned model's.
    assert est.n_iter_ == len(est.loss_curve_) <= 100
    assert est.loss_curve_[-1] == pytest.approx(ours, rel=1e-12)
    assert np.all(np.diff(est.loss_curve_) <= 1e-12 * abs(ours))
    assert est._meta["config"]["optimizer"] == "lbfgs"
    assert est._meta["config"]["standardize"] is False


def test_elastic_net_zeros_the_references_weights():
    x, y, est, _, solve = _elastic_net()
    est.fit(x, y)
    coef, _ = solve()
    zeros = np.flatnonzero(coef == 0)
    assert 5 <= len(zeros) <= 25  # a pattern worth checking
    np.testing.assert_array_equal(np.flatnonzero(est.coef_[0] == 0), zeros)


def test_reaching_max_iter_warns_and_counts_iterations():
    x, y = breast_cancer()
    with pytest.warns(ConvergenceWarning, match=r"max_iter=3 iterations"):
        est = LogisticRegression(C=1.0, max_iter=3).fit(x, y)
    assert est.n_iter_ == 3 == len(est.loss_curve_)
    assert est.loss_curve_[-1] == pytest.approx(
        ref.logistic_objective(x, y, est.coef_, est.intercept_, 1.0 / len(x)), rel=1e-12)


def test_an_mlp_trains_with_lbfgs_on_its_objective():
    """Non-convex: no optimum to compare, but the curve is the objective of the
    returned layers (mean log-loss of the two-way softmax + alpha/2 of every weight)."""
    x, y = breast_cancer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=15,
                            alpha=1e-3, random_state=0).fit(x, y)
    (w1, b1), (w2, b2) = zip(est.coefs_, est.intercepts_)
    z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    loss = np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y])
    objective = loss + 0.5e-3 * (np.sum(w1 * w1) + np.sum(w2 * w2))
    assert est.loss_curve_[-1] == pytest.approx(objective, rel=1e-12)
    assert est.loss_curve_[-1] < 0.5 * est.loss_curve_[0]
    assert est.n_iter_ == len(est.loss_curve_) <= 15


@pytest.mark.mpi
def test_three_uneven_ranks_reach_the_one_rank_optimum(tmp_path):
    """(a) and (d) at 3 ranks: the objective within 1e-9 of 1 rank's and of the
    reference, the weights within 1e-9 of 1 rank's with the same zeros, and a
    ConvergenceWarning on every rank (L-BFGS's and Adam's). Both at tol=TIGHT_TOL, to be within 1e-9."""
    done = run_mpi(3, ["-m", "mpi4py", SCRIPT, tmp_path], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    got = np.load(tmp_path / "fits.npz")
    np.testing.assert_array_equal(got["warned"], [True, True, True])
    np.testing.assert_array_equal(got["warned_adam"], [True, True, True])
    np.testing.assert_array_equal(got["rows"], [300, 69, 200])
    for name, make in (("logistic_l2", _logistic_l2), ("elastic_net_logistic", _elastic_net)):
        x, y, est, objective, solve = make()
        est.set_params(tol=ref.TIGHT_TOL).fit(x, y)
        one, three = (objective(est.coef_, est.intercept_),
                      objective(got[f"{name}_coef"], got[f"{name}_intercept"]))
        assert ref.relative_gap(three, one) < RANKS_RTOL, (name, three, one)
        assert ref.relative_gap(three, objective(*solve())) < RANKS_RTOL, name
        # The iterates themselves differ only by the order of the sums (4e-11 measured).
        scale = np.abs(est.coef_).max()
        np.testing.assert_allclose(got[f"{name}_coef"], est.coef_, rtol=0,
                                   atol=RANKS_RTOL * scale)
        np.testing.assert_allclose(got[f"{name}_intercept"], est.intercept_, rtol=0,
                                   atol=RANKS_RTOL * scale)
        np.testing.assert_array_equal(got[f"{name}_coef"] == 0, est.coef_ == 0)


def test_load_reads_an_lbfgs_folder_of_the_command_line(tmp_path):
    """Its iterations are n_iter_, its objectives loss_curve_, its config the
    parameters; a refit of the loaded estimator trains the same model."""
    import mpi_dml
    from sklearn.base import clone

    from conftest import run_cli

    x, y = breast_cancer()
    header = ",".join([f"f{j}" for j in range(x.shape[1])] + ["label"])
    np.savetxt(tmp_path / "rows.csv", np.column_stack([x, y]), delimiter=",",
               header=header, comments="", fmt="%.17g")
    done = run_cli(0, "train", "--data", tmp_path / "rows.csv", "--label-column", "label",
                   "--out", tmp_path / "m", "--model", "logistic", "--optimizer", "lbfgs",
                   "--weight-decay", "0.01", "--max-iter", "4", "--dtype", "float64",
                   "--progress", "none", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    est = mpi_dml.load(tmp_path / "m")
    assert (type(est), est.solver, est.max_iter, est.alpha, est.standardize) == \
        (LogisticRegression, "lbfgs", 4, 0.01, False)
    assert est.n_iter_ == 4 == len(est.loss_curve_)
    assert est.loss_curve_[-1] == pytest.approx(
        ref.logistic_objective(x, y, est.coef_, est.intercept_, 0.01), rel=1e-12)
    with pytest.warns(ConvergenceWarning):
        again = clone(est).fit(x, y)
    np.testing.assert_allclose(again.coef_, est.coef_, rtol=1e-12)


# --- parameters -> config ----------------------------------------------------------------
def config_of(est, n_rows=500, n_classes=2):
    model = {LinearRegression: "linear", LinearSVC: "svm"}.get(type(est), "logistic")
    return train_config(est, check_params(est), model=model, task=est._task,
                        n_classes=n_classes, dtype="float64", n_rows=n_rows, world_size=1,
                        seed=0, label_column="y")


def test_solver_decides_what_max_iter_tol_and_standardize_mean():
    lbfgs = config_of(LogisticRegression(max_iter=7))
    assert (lbfgs.optimizer, lbfgs.max_iter, lbfgs.tol, lbfgs.standardize) == \
        ("lbfgs", 7, LBFGS_TOL, False)
    adam = config_of(LogisticRegression(solver="adam", max_iter=7))
    assert (adam.epochs, adam.tol, adam.standardize) == (7, 0.0, True)
    given = config_of(LinearRegression(tol=1e-5, standardize=True))
    assert (given.tol, given.standardize) == (1e-5, True)
    assert config_of(MLPClassifier()).standardize is True  # adam, its default


def test_c_is_scikit_learns_inverse_penalty_over_all_rows():
    assert config_of(LogisticRegression(C=2.0), n_rows=300).weight_decay == 1.0 / 600
    assert config_of(LinearSVC(C=0.5), n_rows=40).weight_decay == 1.0 / 20
    assert config_of(LogisticRegression(alpha=0.3)).weight_decay == 0.3
    assert config_of(LogisticRegression(C=np.inf)).weight_decay == 0.0  # scikit-learn's
    with pytest.raises(ValueError, match=r"LogisticRegression got both C=1.0 and alpha=0.5"):
        config_of(LogisticRegression(C=1.0, alpha=0.5))
    with pytest.raises(ValueError, match=r"The 'C' parameter of LinearSVC must be > 0. "
                                         r"Got 0.0 instead."):
        config_of(LinearSVC(C=0))
    with pytest.raises(TypeError, match=r"The 'C' parameter of LogisticRegression must be "
                                        r"a float. Got 'big' instead."):
        config_of(LogisticRegression(C="big"))


def test_svc_loss_maps_onto_the_configs_and_hinge_needs_a_minibatch_solver():
    assert config_of(LinearSVC()).loss == "squared_hinge"
    assert config_of(LinearSVC(loss="hinge", solver="sgd")).loss == "hinge"
    with pytest.raises(ValueError, match=r"The 'solver' parameter of LinearSVC must be sgd, "
                                         r"adam or adamw for the hinge loss"):
        config_of(LinearSVC(loss="hinge"))
    with pytest.raises(ValueError, match=r"The 'loss' parameter of LinearSVC must be one of "
                                         r"squared_hinge, hinge. Got 'log' instead."):
        config_of(LinearSVC(loss="log"))


@pytest.mark.parametrize("cls, params", [
    (LinearSVC, dict(max_iter=9, C=3.0)), (LinearSVC, dict(loss="hinge", solver="adam")),
    (LogisticRegression, dict(solver="sgd", max_iter=3, tol=1e-3)),
    (LinearRegression, dict(max_iter=12, tol=1e-5, standardize=True))])
def test_a_command_line_config_gives_back_the_parameters(cls, params):
    """``mpi_dml.load`` of a folder the command line wrote takes the parameters from
    its config: they train with that config again."""
    est = cls(**params)
    config = config_of(est)
    back = params_from_config(config.to_dict(), type(est)._get_param_names())
    assert back["max_iter"] == est.max_iter and back["solver"] == est.solver
    assert config_of(type(est)(**back)) == config
