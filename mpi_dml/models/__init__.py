"""The models the engine trains: dense layers over one flat buffer, then a loss.

    >>> model = build_model("mlp", "classification", n_features=64, n_classes=10,
    ...                     hidden=(128,), activation="relu")
    >>> svm = build_model("svm", "classification", 64, 2, loss="squared_hinge")

Each kind is a small builder in ``KINDS``; ``build_model`` looks it up. A model the
engine does not know is written against the same ``Model`` interface (see ``dense``).
"""
from __future__ import annotations

from ..kernels.reference import ACTIVATIONS
from .dense import Layer, Model
from .losses import LOSSES, labels_for_loss, predictions

TASKS = ("classification", "regression")
# Activations a hidden layer may use; output layers are always identity.
HIDDEN_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "identity")


def _linear(task, n_features, n_classes, hidden, activation) -> Model:
    return Model("linear", [Layer(n_features, 1, "identity")], "squared")


def _logistic(task, n_features, n_classes, hidden, activation) -> Model:
    return Model("logistic", [Layer(n_features, 1, "identity")], "logistic")


def _svm(task, n_features, n_classes, hidden, activation, loss="hinge") -> Model:
    return Model("svm", [Layer(n_features, 1, "identity")], loss)


def _softmax(task, n_features, n_classes, hidden, activation) -> Model:
    return Model("softmax", [Layer(n_features, n_classes, "identity")], "softmax")


def _mlp(task, n_features, n_classes, hidden, activation) -> Model:
    widths = [n_features, *hidden]
    layers = [Layer(a, b, activation) for a, b in zip(widths[:-1], widths[1:])]
    if task == "regression":
        return Model("mlp", layers + [Layer(widths[-1], 1, "identity")], "squared")
    return Model("mlp", layers + [Layer(widths[-1], n_classes, "identity")], "softmax")


# kind -> (builder, the task it is fixed to, or None when the task is a choice)
KINDS = {
    "linear": (_linear, "regression"),
    "logistic": (_logistic, "classification"),
    "softmax": (_softmax, "classification"),
    "svm": (_svm, "classification"),
    "mlp": (_mlp, None),
}
MODELS = tuple(KINDS)
# Kinds whose loss is a choice (build_model's ``loss``), the default first: the svm's
# hinge, or its squared form, which is smooth and so suits L-BFGS.
LOSS_CHOICES = {"svm": ("hinge", "squared_hinge")}


def default_task(kind: str) -> str:
    """The task a kind trains for when none is given."""
    fixed = KINDS[kind][1] if kind in KINDS else None
    return fixed or "classification"


def build_model(kind: str, task: str, n_features: int, n_classes: int,
                hidden=(), activation: str = "relu", loss: str | None = None) -> Model:
    """The Model for a config's model/task and the data's width and classes.

    ``loss`` None keeps the kind's own loss; a kind in ``LOSS_CHOICES`` may be given
    one of its choices instead (``config.model_loss`` resolves the svm's).
    """
    builder, _ = KINDS[kind]
    if loss is None:
        return builder(task, n_features, n_classes, tuple(hidden), activation)
    choices = LOSS_CHOICES.get(kind)
    if choices is None:
        raise ValueError(f"The loss of model {kind} is fixed: loss must be None. "
                         f"Got {loss!r} instead.")
    if loss not in choices:
        raise ValueError(f"The loss of model {kind} must be one of {', '.join(choices)}. "
                         f"Got {loss!r} instead.")
    return builder(task, n_features, n_classes, tuple(hidden), activation, loss=loss)


__all__ = ["HIDDEN_ACTIVATIONS", "KINDS", "LOSS_CHOICES", "LOSSES", "Layer", "MODELS", "Model",
           "TASKS", "build_model", "default_task", "labels_for_loss", "predictions"]
