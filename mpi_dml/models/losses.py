"""Losses: the kernel behind each, the labels each takes, and predictions from outputs.

Each loss kernel turns the output layer's values into the loss summed over the rows and
dLoss/dz in place (``kernels/reference.py`` defines them).
"""
from __future__ import annotations

import numpy as np

from ..devices.arrays import array_module

# loss name -> the kernel that turns outputs into loss and dLoss/dz
LOSSES = {
    "squared": "squared_loss_grad",
    "logistic": "logistic_loss_grad",
    "hinge": "hinge_loss_grad",
    "softmax": "softmax_xent",
    # LIBLINEAR's L2-loss SVM: differentiable, so full-batch solvers (L-BFGS) can use it.
    "squared_hinge": "squared_hinge_loss_grad",
}


def labels_for_loss(model, y: np.ndarray, dtype) -> np.ndarray:
    """Labels in the form each loss kernel takes."""
    if model.loss == "softmax":
        return y.astype(np.int64)
    if model.loss == "squared":
        return y.astype(dtype).reshape(-1, 1)
    return y.astype(dtype)


def predictions(model, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(predicted labels or values, class probabilities or None) from raw outputs."""
    xp = array_module(raw)
    if model.loss == "squared":
        return raw[:, 0], None
    if model.loss == "softmax":
        shifted = raw - raw.max(axis=1, keepdims=True)
        p = xp.exp(shifted)
        p /= p.sum(axis=1, keepdims=True)
        return raw.argmax(axis=1), p
    positive = raw[:, 0] > 0
    if model.loss == "logistic":
        p1 = 1.0 / (1.0 + xp.exp(-raw[:, 0]))
        return positive.astype(np.int64), xp.stack([1 - p1, p1], axis=1)
    return positive.astype(np.int64), None

