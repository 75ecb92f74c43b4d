"""The convex problems the linear estimators solve, written out in NumPy, and their
optima from scikit-learn and SciPy: the independent side of test_estimators_lbfgs.py.

    $ .venv/bin/python -m pytest -q tests/test_estimators_lbfgs.py

Each ``*_objective`` is the objective the estimators minimize, in float64, from
scikit-learn shaped ``coef`` and ``intercept``: the mean loss over the rows + alpha / 2
* ||W||^2 + l1 * ||W||_1, the intercepts not penalized. The losses are the engine's
(``kernels/reference.py``): squared 1/2 (z - y)^2, logistic, multinomial softmax and
squared hinge max(0, 1 - t z)^2 with t = +-1.

scikit-learn minimizes C * sum(loss) + ||W||^2 / 2, which is C * n times ours with
alpha = 1 / (C * n); Ridge minimizes ||y - X w - b||^2 + a ||w||^2, 2 n times ours with
alpha = a / n. Where scikit-learn has no solver for the same problem (an elastic net
at a tolerance of 1e-12; the squared hinge with an unpenalized intercept), SciPy's
L-BFGS-B solves the smooth form: for the L1 term, w = u - v with u, v >= 0, which has
the same optimum (an optimum never has u_j > 0 and v_j > 0 at once).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

# The elastic net the tests solve on the standardized breast cancer rows: 15 of the 30
# weights at 0, each with its gradient at most 97% of l1 (a margin no solver's last
# digits can cross).
ELASTIC_NET = {"alpha": 1e-2, "l1": 0.02}
# The estimators' tol where the tests ask for 1e-9 of the optimum: the default, 1e-9,
# stops once an iteration changes the objective by less than 1e-9 of it, which leaves
# it up to about that far above (2e-9 on the elastic net).
TIGHT_TOL = 1e-12
# L-BFGS-B run to the rounding of float64 (the references must be better than the
# 1e-7 the tests ask of the estimators).
_SCIPY_OPTIONS = {"maxiter": 20000, "maxcor": 30, "ftol": 1e-16, "gtol": 1e-13}


def standardized(x):
    """Features scaled by the test beforehand, so the problems are well conditioned."""
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def penalties(coef, alpha, l1=0.0) -> float:
    w = np.asarray(coef, dtype=np.float64)
    return 0.5 * alpha * float(np.sum(w * w)) + l1 * float(np.sum(np.abs(w)))


def squared_objective(x, y, coef, intercept, alpha) -> float:
    z = x @ np.ravel(coef) + float(np.ravel(intercept)[0])
    return 0.5 * float(np.mean((z - y) ** 2)) + penalties(coef, alpha)


def logistic_objective(x, y01, coef, intercept, alpha, l1=0.0) -> float:
    z = x @ np.ravel(coef) + float(np.ravel(intercept)[0])
    return float(np.mean(np.logaddexp(0.0, z) - y01 * z)) + penalties(coef, alpha, l1)


def softmax_objective(x, labels, coef, intercept, alpha) -> float:
    """``coef`` (n_classes, n_features), ``labels`` 0 .. n_classes - 1."""
    z = x @ np.asarray(coef).T + np.asarray(intercept)
    loss = logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]
    return float(np.mean(loss)) + penalties(coef, alpha)


def squared_hinge_objective(x, y01, coef, intercept, alpha) -> float:
    t = 2.0 * y01 - 1.0
    z = x @ np.ravel(coef) + float(np.ravel(intercept)[0])
    return float(np.mean(np.maximum(0.0, 1.0 - t * z) ** 2)) + penalties(coef, alpha)


# --- references -------------------------------------------------------------------------
def sklearn_logistic(x, labels, alpha):
    """scikit-learn's L2 logistic regression (multinomial beyond two classes) at the
    same penalty, to its own tolerance of 1e-12: (coef, intercept)."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs: "ABNORMAL" once it can go no lower
        ref = LogisticRegression(C=1.0 / (alpha * len(x)), solver="lbfgs", tol=1e-12,
                                 max_iter=10000).fit(x, labels)
    return ref.coef_, ref.intercept_


def sklearn_ridge(x, y, alpha):
    """scikit-learn's Ridge (closed form, intercept not penalized) at the same penalty."""
    from sklearn.linear_model import Ridge

    ref = Ridge(alpha=alpha * len(x), solver="cholesky").fit(x, y)
    return ref.coef_, ref.intercept_


def scipy_elastic_net_logistic(x, y01, alpha, l1):
    """The elastic-net logistic regression by L-BFGS-B on w = u - v, u, v >= 0:
    (coef, intercept), coef exactly 0 where both bounds hold."""
    n, d = x.shape

    def fun(theta):
        u, v, b = theta[:d], theta[d:2 * d], theta[-1]
        w = u - v
        z = x @ w + b
        p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, without overflow
        g = x.T @ (p - y01) / n + alpha * w
        f = float(np.mean(np.logaddexp(0.0, z) - y01 * z)) + 0.5 * alpha * w @ w \
            + l1 * float(np.sum(u + v))
        return f, np.concatenate([g + l1, -g + l1, [np.mean(p - y01)]])

    bounds = [(0.0, None)] * (2 * d) + [(None, None)]
    done = minimize(fun, np.zeros(2 * d + 1), jac=True, method="L-BFGS-B", bounds=bounds,
                    options=_SCIPY_OPTIONS)
    return done.x[:d] - done.x[d:2 * d], done.x[-1:]


def scipy_squared_hinge(x, y01, alpha):
    """The squared-hinge SVM (intercept not penalized) by L-BFGS-B: (coef, intercept).
    Its gradient is continuous, so L-BFGS-B reaches the optimum as on a smooth loss."""
    n, d = x.shape
    t = 2.0 * y01 - 1.0

    def fun(theta):
        w, b = theta[:d], theta[-1]
        slack = np.maximum(0.0, 1.0 - t * (x @ w + b))
        dz = -2.0 * t * slack / n
        f = float(np.mean(slack ** 2)) + 0.5 * alpha * w @ w
        return f, np.concatenate([x.T @ dz + alpha * w, [dz.sum()]])

    done = minimize(fun, np.zeros(d + 1), jac=True, method="L-BFGS-B", options=_SCIPY_OPTIONS)
    return done.x[:d], done.x[-1:]


def relative_gap(ours: float, reference: float) -> float:
    return abs(ours - reference) / abs(reference)
