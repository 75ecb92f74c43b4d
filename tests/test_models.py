"""Every model: finite-difference gradient check, buffer layout, both kernel backends."""
import numpy as np
import pytest

from mpi_dml import kernels
from mpi_dml.models import build_model, labels_for_loss, predictions

CASES = [
    ("linear", "regression", ()),
    ("logistic", "classification", ()),
    ("svm", "classification", ()),
    ("softmax", "classification", ()),
    ("mlp", "classification", (6, 5)),
    ("mlp", "regression", (7,)),
]


def make_batch(kind, task, n=9, d=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if task == "regression":
        y = rng.normal(size=n)
    elif kind in ("logistic", "svm"):
        y = rng.integers(0, 2, size=n).astype(float)
    else:
        y = rng.integers(0, classes, size=n).astype(float)
    return x, y


def total_loss(model, params, x, y, k):
    loss, _, _ = model.evaluate(params, x, y, k)
    return loss


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("kind,task,hidden", CASES)
def test_gradient_matches_finite_differences(kind, task, hidden, activation, backend):
    k = kernels.get(backend)
    model = build_model(kind, task, 4, 3, hidden, activation)
    x, y_raw = make_batch(kind, task)
    y = labels_for_loss(model, y_raw, np.float64)
    params = np.random.default_rng(1).normal(scale=0.5, size=model.size)
    if kind == "svm":
        params *= 0.1  # keep margins away from the hinge's kink
    grads = np.empty_like(params)
    model.loss_grad(params, grads, x, y, k)
    eps = 1e-6
    numeric = np.empty_like(params)
    for i in range(params.size):
        p = params.copy(); p[i] += eps
        up = total_loss(model, p, x, y, k)
        p[i] -= 2 * eps
        numeric[i] = (up - total_loss(model, p, x, y, k)) / (2 * eps)
    np.testing.assert_allclose(grads, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,task,hidden", CASES)
def test_empty_batch_gives_zero_gradient(kind, task, hidden):
    k = kernels.get("cpu")
    model = build_model(kind, task, 4, 3, hidden, "relu")
    x, y_raw = make_batch(kind, task, n=0)
    params = np.random.default_rng(0).normal(size=model.size)
    grads = np.full_like(params, np.nan)
    loss, correct = model.loss_grad(params, grads, x, labels_for_loss(model, y_raw, np.float64), k)
    assert loss == 0 and correct == 0
    assert not grads.any()


def test_buffer_holds_last_layer_first():
    model = build_model("mlp", "classification", 5, 3, (4,), "relu")
    offsets = {name: offset for name, _, offset, _ in model.params}
    assert offsets["layers.1.weight"] == 0
    assert offsets["layers.1.bias"] < offsets["layers.0.weight"] < offsets["layers.0.bias"]
    assert model.size == 5 * 4 + 4 + 4 * 3 + 3


def test_views_share_the_flat_buffer():
    model = build_model("mlp", "classification", 5, 3, (4,), "relu")
    flat = np.zeros(model.size)
    (w0, b0), (w1, b1) = model.views(flat)
    w0[...] = 1
    b1[...] = 2
    assert flat.sum() == 5 * 4 + 2 * 3
    mask = model.decay_mask()
    assert mask.sum() == 5 * 4 + 4 * 3


def test_init_is_seeded_and_linear_models_start_at_zero():
    mlp = build_model("mlp", "classification", 5, 3, (4,), "relu")
    a, b = np.empty(mlp.size), np.empty(mlp.size)
    mlp.init(a, 7)
    mlp.init(b, 7)
    np.testing.assert_array_equal(a, b)
    assert a.any()
    lin = build_model("softmax", "classification", 5, 3)
    c = np.ones(lin.size)
    lin.init(c, 7)
    assert not c.any()


def test_predictions_shapes():
    model = build_model("softmax", "classification", 2, 3)
    labels, probs = predictions(model, np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    logistic = build_model("logistic", "classification", 2, 2)
    labels, probs = predictions(logistic, np.array([[-1.0], [2.0]]))
    np.testing.assert_array_equal(labels, [0, 1])
    assert probs.shape == (2, 2)
