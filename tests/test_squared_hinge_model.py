"""Model "svm" with the squared hinge loss: built, differentiated, written to a model
folder and read back, and refused on a resume that changes the loss. No MPI.

    $ .venv/bin/python -m pytest -q tests/test_squared_hinge_model.py
"""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from mpi_dml import kernels
from mpi_dml.config import TrainConfig, model_loss
from mpi_dml.engine.checkpoint import CheckpointState, model_description
from mpi_dml.engine.compatibility import check_compatible
from mpi_dml.errors import UserError
from mpi_dml.io.model_files import load_model, save_model
from mpi_dml.models import build_model, labels_for_loss, predictions


def rng_for(*params):
    return np.random.default_rng(zlib.crc32(repr(params).encode()))


# --- the model -------------------------------------------------------------------------

def test_build_model_takes_the_svm_loss_and_refuses_others():
    assert build_model("svm", "classification", 3, 2).loss == "hinge"
    assert build_model("svm", "classification", 3, 2, loss="hinge").loss == "hinge"
    model = build_model("svm", "classification", 3, 2, loss="squared_hinge")
    assert (model.loss, model.kind, model.size) == ("squared_hinge", "svm", 4)
    assert model.describe()["loss"] == "squared_hinge"
    with pytest.raises(ValueError, match="loss of model svm must be one of hinge, "
                                         "squared_hinge. Got 'logistic' instead"):
        build_model("svm", "classification", 3, 2, loss="logistic")
    with pytest.raises(ValueError, match="loss of model logistic is fixed: loss must be "
                                         "None. Got 'logistic' instead"):
        build_model("logistic", "classification", 3, 2, loss="logistic")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_model_gradient_matches_finite_differences(backend):
    k = kernels.get(backend)
    model = build_model("svm", "classification", 4, 2, loss="squared_hinge")
    rng = rng_for("model", backend)
    x = rng.normal(size=(12, 4))
    y = labels_for_loss(model, rng.integers(0, 2, size=12), np.float64)
    params = rng.normal(scale=0.5, size=model.size)
    margins = (2 * y - 1) * (x @ params[:4] + params[4])  # weight first, then bias
    assert (margins < 1).any() and (margins > 1).any()  # both sides of the margin
    grads = np.empty_like(params)
    loss, _ = model.loss_grad(params, grads, x, y, k)
    assert loss == pytest.approx(np.sum(np.maximum(0, 1 - margins) ** 2), rel=1e-12)
    numeric = np.empty_like(params)
    for i in range(params.size):
        up, down = params.copy(), params.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        numeric[i] = (model.evaluate(up, x, y, k)[0] - model.evaluate(down, x, y, k)[0]) / 2e-6
    np.testing.assert_allclose(grads, numeric, rtol=1e-5, atol=1e-6)
    labels, probs = predictions(model, np.array([[-0.5], [0.25]]))
    np.testing.assert_array_equal(labels, [0, 1])
    assert probs is None


# --- model files and resumes -----------------------------------------------------------

def test_model_files_carry_the_loss(tmp_path):
    model = build_model("svm", "classification", 2, 2, loss="squared_hinge")
    params = np.array([0.5, -1.0, 0.25], np.float32)
    meta = {"feature_names": ["a", "b"], "label_column": "label", "classes": [0, 1]}
    save_model(tmp_path, model, params, meta)
    loaded = load_model(tmp_path)
    assert loaded.model.loss == "squared_hinge"
    np.testing.assert_array_equal(loaded.params, params)

    info = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(dict(info, kind="logistic")))
    with pytest.raises(UserError, match="'loss' must be logistic for kind logistic. "
                                        "Got 'squared_hinge' instead."):
        load_model(tmp_path)


def test_resume_under_another_svm_loss_is_refused_naming_the_flag():
    base = {"data": "train.csv", "label_column": "label", "out": "runs/x", "model": "svm"}
    data = {"n_features": 5, "n_classes": 2, "n_train": 100, "n_val": 20,
            "feature_names": [f"f{i}" for i in range(5)]}

    def described(cfg):
        model = build_model("svm", "classification", 5, 2, loss=model_loss(cfg))
        return model, model_description(model, cfg.dtype)

    hinge = TrainConfig(**base)  # "auto" under sgd: the hinge
    model, desc = described(hinge)
    state = CheckpointState(
        arrays={"params": np.zeros(model.size, np.float32)}, algorithm="minibatch",
        counters={"epoch": 1, "step_in_epoch": 0}, step=4, period={}, history=[],
        standardize=None, config=hinge.to_dict(), model=desc, data=data, world_size=2)
    assert check_compatible(state, hinge, desc, data, "c") == []
    squared = TrainConfig(**base, loss="squared_hinge")
    with pytest.raises(UserError, match=r"written for a model with hinge loss; this run uses "
                                        r"squared_hinge loss \(resume with --loss hinge\)"):
        check_compatible(state, squared, described(squared)[1], data, "c")
