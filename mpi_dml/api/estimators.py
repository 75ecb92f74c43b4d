"""scikit-learn style estimators that train data-parallel across MPI ranks.

    $ python my_script.py                   # one process: a job of one rank
    $ mpiexec -n 4 python my_script.py      # four ranks, each with its own rows

    import mpi_dml
    clf = mpi_dml.LogisticRegression(random_state=0).fit(X_mine, y_mine)  # collective
    clf.predict(X_mine_test)                  # this rank's rows
    clf.score(X_mine_test, y_mine_test)       # collective: the global accuracy everywhere
    clf.save("runs/clf")                      # the folder `python -m mpi_dml train` writes

``fit`` and ``score`` are collective over ``comm`` (every rank of the job by default):
each rank passes its own rows, NumPy arrays or pandas DataFrames, any number of them,
none included (an array of shape (0, n_features)). The model is the one
``python -m mpi_dml train`` trains on every rank's rows concatenated in rank order
with the same settings, and the same on any number of ranks. ``predict``,
``predict_proba`` and ``decision_function`` work on each rank's own rows.

They follow scikit-learn's conventions, so ``clone``, ``Pipeline`` and
``GridSearchCV(n_jobs=1)`` work; under MPI every rank must run the same sequence of
fits (same grid, same splits) and score with the estimator's own, collective,
``score`` (``scoring=None``). ``n_jobs > 1`` would fit in other processes, outside the
communicator.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length

from .est_base import DataParallelEstimator
from .est_collective import (
    combine_moments,
    gather_or_raise,
    local_moments,
    row_weights,
    union_classes,
)

__all__ = ["LinearRegression", "LogisticRegression", "LinearSVC", "MLPClassifier",
           "MLPRegressor"]


class _Classifier(ClassifierMixin, DataParallelEstimator):
    _task = "classification"

    def fit(self, X, y):
        """Train on this rank's rows ``X`` and labels ``y``; collective. Returns self."""
        return self._fit(X, y)

    def _local_labels(self, y):
        check_classification_targets(y)
        return np.unique(y)

    def _encode(self, summaries, y):
        classes = union_classes([s["labels"] for s in summaries])
        self._check_classes(classes)
        return classes, np.searchsorted(classes, y).astype(np.float64)

    def _check_classes(self, classes):
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes, "
                             f"but the data holds only one class: {classes.tolist()[0]!r}.")

    def decision_function(self, X):
        """Confidence scores of this rank's rows: shape (n,) for two classes (> 0 means
        ``classes_[1]``), else (n, n_classes)."""
        raw = self._raw(X)
        if raw.shape[1] == 1:
            return raw[:, 0]
        if raw.shape[1] == 2 and len(self.classes_) == 2:
            return raw[:, 1] - raw[:, 0]  # the log-odds of a two-way softmax
        return raw

    def predict(self, X):
        """Class labels of this rank's rows."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def score(self, X, y, sample_weight=None):
        """Accuracy over every rank's rows; collective, the same float on every rank."""
        def local():
            predicted = self.predict(X)
            truth = np.asarray(y)
            if truth.ndim == 2 and truth.shape[1] == 1:
                truth = truth[:, 0]
            check_consistent_length(predicted, truth)
            w = row_weights(sample_weight, len(predicted))
            return float((w * (predicted == truth)).sum()), float(w.sum())

        parts = gather_or_raise(self._world(), local)
        total = sum(w for _, w in parts)
        if total <= 0:
            raise ValueError("score needs at least one row with a positive weight over "
                             "all ranks.")
        return float(sum(hits for hits, _ in parts) / total)


class _Probabilities:
    def predict_proba(self, X):
        """Class probabilities of this rank's rows, shape (n, n_classes), in the order
        of ``classes_``."""
        from ..models import predictions

        raw = self._raw(X)  # checks that the estimator is fitted
        return predictions(self._model, raw)[1]

    def predict_log_proba(self, X):
        """Logarithm of ``predict_proba``."""
        return np.log(self.predict_proba(X))


class _MLP:
    """What both MLPs share: the model kind, and each layer's weights shown."""

    def _model_kind(self, n_classes):
        return "mlp"

    def _expose(self, layers):
        self.coefs_ = [w for w, _ in layers]
        self.intercepts_ = [b for _, b in layers]


class _Regressor(RegressorMixin, DataParallelEstimator):
    _task = "regression"

    def fit(self, X, y):
        """Train on this rank's rows ``X`` and targets ``y``; collective. Returns self."""
        return self._fit(X, y)

    def _y_rules(self):
        return {"y_numeric": True}

    def predict(self, X):
        """Predicted targets of this rank's rows."""
        return self._raw(X)[:, 0]

    def score(self, X, y, sample_weight=None):
        """R^2 over every rank's rows; collective, the same float on every rank."""
        def local():
            predicted = self.predict(X).astype(np.float64)
            truth = np.asarray(y, dtype=np.float64)
            if truth.ndim == 2 and truth.shape[1] == 1:
                truth = truth[:, 0]
            check_consistent_length(predicted, truth)
            w = row_weights(sample_weight, len(predicted))
            return local_moments(truth, w), float((w * (truth - predicted) ** 2).sum())

        parts = gather_or_raise(self._world(), local)
        weight, _, total = combine_moments([m for m, _ in parts])
        if weight <= 0:
            raise ValueError("score needs at least one row with a positive weight over "
                             "all ranks.")
        residual = sum(r for _, r in parts)
        if total == 0:  # scikit-learn's r2_score: a constant target is 1 if hit, else 0
            return 1.0 if residual == 0 else 0.0
        return float(1.0 - residual / total)


def _linear_binary(layers, classes):
    """(coef_, intercept_) of a one-layer classifier, as scikit-learn shapes them:
    (1, n_features) and (1,) for two classes, (n_classes, n_features) and (n_classes,)
    beyond."""
    w, b = layers[0]
    if w.shape[1] == 2 and len(classes) == 2:  # a two-way softmax as one decision
        return (w[:, 1] - w[:, 0])[None, :], b[1:] - b[:1]
    return np.ascontiguousarray(w.T), b.copy()


def _keep(est, arguments: dict):
    """``__init__`` stores its arguments and nothing else (scikit-learn's rule)."""
    for name, value in arguments.items():
        if name not in ("self", "__class__"):
            setattr(est, name, value)


_COMMON = """
    alpha : float, default={alpha}
        L2 penalty on the weights (not the biases): the objective is the mean loss +
        alpha / 2 * ||W||^2 (``weight_decay``; decoupled for solver="adamw").
    l1 : float, default=0.0
        L1 penalty on the weights: + l1 * ||W||_1 in the objective (OWL-QN under
        solver="lbfgs", a proximal step after each update otherwise).
    solver : {{"lbfgs", "adam", "sgd", "adamw"}}, default="{solver}"
        The optimizer. "lbfgs" is full-batch L-BFGS: it minimizes the objective to
        ``tol`` and ignores the learning rate, batch and momentum settings.{lbfgs_note}
    learning_rate_init : float, default={lr}
        The learning rate (its peak, after any warm-up).
    momentum : float, default=0.9
        Momentum of solver="sgd".
    nesterovs_momentum : bool, default=True
        Nesterov momentum for solver="sgd" (when momentum > 0).
    beta_1, beta_2, epsilon : float, default=0.9, 0.999, 1e-8
        Adam's moment decays and its epsilon.
    batch_size : int or "auto", default="auto"
        The GLOBAL batch, split across ranks (never multiplied by them): "auto" is
        min(200, rows over all ranks), and at least the number of ranks.
    max_iter : int, default={epochs}
        The most iterations (solver="lbfgs") or epochs (passes over the rows).
    tol : float or None, default={tol}
        solver="lbfgs": stop once the gradient norm has fallen by this factor from its
        start, or the objective changed by less than this fraction in an iteration
        (> 0; None: 1e-9, the optimum to about 1e-9 in float64). The minibatch
        solvers: stop once the training loss has improved by less than ``tol`` for
        ``n_iter_no_change`` epochs in a row; None or 0 runs every epoch.
    n_iter_no_change : int, default=10
        See ``tol`` (minibatch solvers).
    random_state : int, RandomState instance or None, default=None
        The seed of the initial weights and of the batches. An int is the seed
        itself (``--seed`` on the command line); None draws one from fresh entropy
        (NumPy's global generator is left alone), a RandomState instance draws one,
        both on rank 0, whose seed every rank takes.
    schedule : {{"constant", "step", "cosine"}}, default="constant"
        The learning rate schedule.
    warmup_steps : int, default=0
        Steps of linear warm-up.
    standardize : bool or "auto", default="auto"
        Train on features scaled to zero mean and unit variance over every rank's
        rows (the scaling is part of the model, and the penalties then fall on the
        weights of the scaled features). "auto": True for the minibatch solvers,
        which easily diverge on unscaled features; False for solver="lbfgs", so that
        the penalties fall on the raw weights, as in scikit-learn, and the optimum is
        scikit-learn's.
    shards : int, default=131072
        Virtual shards: batches depend on them and on the seed, never on the number
        of ranks.
    device : {{"cpu", "gpu", "auto"}}, default="cpu"
        Where training computes.
    verbose : bool, default=False
        Rank 0 prints a line per epoch or iteration on stderr.
    comm : mpi4py communicator or None, default=None
        The ranks that train together; None is every rank of the job. It is used
        as given and shared by clones.
"""

# Defaults of the linear models, which L-BFGS solves to their optimum.
_CONVEX = dict(solver="lbfgs", tol=None, lbfgs_note="")
# The MLPs keep Adam: their objective is not convex, and L-BFGS finds a local minimum
# near the start, like any other solver.
_NON_CONVEX = dict(solver="adam", tol=1e-4, lbfgs_note="\n        The objective is not "
                   "convex: L-BFGS, too, ends in a local minimum that\n        depends "
                   "on the initial weights (``random_state``).")

_C = """
    C : float or None, default=None
        Inverse of the L2 strength, as scikit-learn's ``C``: alpha = 1 / (C * n),
        with n the rows over every rank, so that C * sum(loss) + ||W||^2 / 2 is
        minimized; ``np.inf``: no L2 penalty. None: ``alpha`` decides; giving both is
        an error."""

_FITTED = """
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of str
        Names of the features, when fit was given a DataFrame with string column
        names.
    n_iter_ : int
        Iterations (solver="lbfgs") or epochs run.
    loss_curve_ : list of float
        solver="lbfgs": the objective (mean loss over every rank's rows + the
        penalties) after each iteration; otherwise the training loss (mean over every
        rank's rows) after each epoch.
"""


_COLLECTIVE = """
    Every rank of ``comm`` calls ``fit`` and ``score`` with its own rows
    (``$ mpiexec -n 4 python my_script.py``); the model is the same on any number of
    ranks. ``predict`` and the other methods work on the calling rank's rows.
"""


def _doc(summary: str, params: str, attributes: str, **defaults) -> str:
    return (f"{summary}\n{_COLLECTIVE}\n    Parameters\n    ----------{params}"
            f"{_COMMON.format(**defaults)}\n    Attributes\n    ----------{attributes}{_FITTED}")


_MLP_PARAMS = """
    hidden_layer_sizes : tuple of int, default=(100,)
        Widths of the hidden layers.
    activation : {"relu", "tanh"}, default="relu"
        Activation of the hidden layers."""


class LinearRegression(_Regressor):
    __doc__ = _doc(
        "Least squares linear regression over MPI ranks (model \"linear\"), by full-batch\n"
        "    L-BFGS or minibatch gradient descent. The objective is mean((X w + b - y)^2) / 2\n"
        "    + alpha / 2 * ||w||^2 + l1 * ||w||_1: scikit-learn's Ridge(alpha=a) is\n"
        "    alpha = a / n (n rows over every rank). ``alpha`` defaults to 0: ordinary\n"
        "    least squares.",
        "", """
    coef_ : ndarray of shape (n_features,)
        Weights on the raw features (the standardization folded in).
    intercept_ : float
        The intercept on the raw features.""", alpha=0.0, lr=0.01, epochs=100, **_CONVEX)

    def __init__(self, *, alpha=0.0, l1=0.0, solver="lbfgs", learning_rate_init=0.01,
                 momentum=0.9, nesterovs_momentum=True, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, batch_size="auto", max_iter=100, tol=None,
                 n_iter_no_change=10, random_state=None, schedule="constant",
                 warmup_steps=0, standardize="auto", shards=131072, device="cpu",
                 verbose=False, comm=None):
        _keep(self, locals())

    def _model_kind(self, n_classes):
        return "linear"

    def _expose(self, layers):
        w, b = layers[0]
        self.coef_, self.intercept_ = w[:, 0].copy(), b[0]


class LogisticRegression(_Probabilities, _Classifier):
    __doc__ = _doc(
        "Logistic regression over MPI ranks: model \"logistic\" for two classes,\n"
        "    multinomial \"softmax\" for more. The objective is the mean log-loss +\n"
        "    alpha / 2 * ||W||^2 + l1 * ||W||_1 (intercepts not penalized); under\n"
        "    solver=\"lbfgs\" with C given, scikit-learn's optimum for the same C.", _C, """
    classes_ : ndarray of shape (n_classes,)
        The labels, sorted: the union of every rank's labels.
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
        Weights on the raw features (the standardization folded in).
    intercept_ : ndarray of shape (1,) or (n_classes,)
        The intercepts on the raw features.""", alpha=1e-4, lr=0.01, epochs=100, **_CONVEX)

    def __init__(self, *, alpha=1e-4, C=None, l1=0.0, solver="lbfgs",
                 learning_rate_init=0.01, momentum=0.9, nesterovs_momentum=True, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, batch_size="auto", max_iter=100, tol=None,
                 n_iter_no_change=10, random_state=None, schedule="constant",
                 warmup_steps=0, standardize="auto", shards=131072, device="cpu",
                 verbose=False, comm=None):
        _keep(self, locals())

    def _model_kind(self, n_classes):
        return "logistic" if n_classes == 2 else "softmax"

    def _expose(self, layers):
        self.coef_, self.intercept_ = _linear_binary(layers, self.classes_)


class LinearSVC(_Classifier):
    __doc__ = _doc(
        "Linear support vector classifier over MPI ranks (model \"svm\"): the mean of\n"
        "    max(0, 1 - t z)^2 (t = +-1; or max(0, 1 - t z) for loss=\"hinge\") + alpha / 2 *\n"
        "    ||w||^2 + l1 * ||w||_1, the intercept not penalized (scikit-learn's LinearSVC\n"
        "    penalizes it, so its optimum differs slightly). Binary only: y must hold\n"
        "    exactly two classes. It gives no probabilities.",
        _C + """
    loss : {"squared_hinge", "hinge"}, default="squared_hinge"
        The loss. "hinge" is not differentiable: it needs solver "sgd", "adam" or
        "adamw".""", """
    classes_ : ndarray of shape (2,)
        The two labels, sorted.
    coef_ : ndarray of shape (1, n_features)
        Weights on the raw features (the standardization folded in).
    intercept_ : ndarray of shape (1,)
        The intercept on the raw features.""", alpha=1e-4, lr=0.01, epochs=100, **_CONVEX)

    def __init__(self, *, alpha=1e-4, C=None, loss="squared_hinge", l1=0.0, solver="lbfgs",
                 learning_rate_init=0.01, momentum=0.9, nesterovs_momentum=True, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, batch_size="auto", max_iter=100, tol=None,
                 n_iter_no_change=10, random_state=None, schedule="constant",
                 warmup_steps=0, standardize="auto", shards=131072, device="cpu",
                 verbose=False, comm=None):
        _keep(self, locals())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _check_classes(self, classes):
        super()._check_classes(classes)
        if len(classes) > 2:
            # scikit-learn's wording for a binary-only classifier, which its checks match.
            raise ValueError(f"Only binary classification is supported: y of LinearSVC "
                             f"must hold 2 classes over all ranks, but it holds "
                             f"{len(classes)}. Use LogisticRegression or MLPClassifier "
                             f"for more.")

    def _model_kind(self, n_classes):
        return "svm"

    def _expose(self, layers):
        self.coef_, self.intercept_ = _linear_binary(layers, self.classes_)


class MLPClassifier(_MLP, _Probabilities, _Classifier):
    __doc__ = _doc(
        "Multi-layer perceptron classifier over MPI ranks (model \"mlp\"): dense\n"
        "    hidden layers, then a softmax over the classes (two outputs for two).",
        _MLP_PARAMS, """
    classes_ : ndarray of shape (n_classes,)
        The labels, sorted: the union of every rank's labels.
    coefs_ : list of ndarray
        Weights of each layer, shape (n_in, n_out); the first on the raw features.
    intercepts_ : list of ndarray
        Biases of each layer.""", alpha=1e-4, lr=0.001, epochs=200, **_NON_CONVEX)

    def __init__(self, *, hidden_layer_sizes=(100,), activation="relu", alpha=1e-4, l1=0.0,
                 solver="adam", learning_rate_init=0.001, momentum=0.9,
                 nesterovs_momentum=True, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 batch_size="auto", max_iter=200, tol=1e-4, n_iter_no_change=10,
                 random_state=None, schedule="constant", warmup_steps=0, standardize="auto",
                 shards=131072, device="cpu", verbose=False, comm=None):
        _keep(self, locals())


class MLPRegressor(_MLP, _Regressor):
    __doc__ = _doc(
        "Multi-layer perceptron regressor over MPI ranks (model \"mlp\", squared loss,\n"
        "    one target).", _MLP_PARAMS, """
    coefs_ : list of ndarray
        Weights of each layer, shape (n_in, n_out); the first on the raw features.
    intercepts_ : list of ndarray
        Biases of each layer.""", alpha=1e-4, lr=0.001, epochs=200, **_NON_CONVEX)

    def __init__(self, *, hidden_layer_sizes=(100,), activation="relu", alpha=1e-4, l1=0.0,
                 solver="adam", learning_rate_init=0.001, momentum=0.9,
                 nesterovs_momentum=True, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 batch_size="auto", max_iter=200, tol=1e-4, n_iter_no_change=10,
                 random_state=None, schedule="constant", warmup_steps=0, standardize="auto",
                 shards=131072, device="cpu", verbose=False, comm=None):
        _keep(self, locals())
