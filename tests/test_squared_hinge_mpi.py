"""An svm trained with the squared hinge keeps it: train writes it into model.json,
and evaluate and ``mpi_dml.load`` rebuild the model with it.

    $ .venv/bin/python -m pytest -q tests/test_squared_hinge_mpi.py
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load

from conftest import run_cli

FEATURES = ("a", "b", "c")


def write_csv(path, n=48):
    """Two classes that a line nearly separates, so some rows end inside the margin."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(int)
    lines = [f"{a:.4f},{b:.4f},{c:.4f},{label}" for (a, b, c), label in zip(x, y)]
    path.write_text("a,b,c,label\n" + "\n".join(lines) + "\n")
    return np.loadtxt(path, delimiter=",", skiprows=1)


def replay(folder, rows):
    """(mean squared hinge, accuracy, margins) of the saved model on ``rows``, in NumPy:
    standardized as model.json says, t = 2y - 1, z = x w + b."""
    info = json.loads((folder / "model.json").read_text())
    tensors = load((folder / "model.safetensors").read_bytes())
    x, y = rows[:, :3], rows[:, 3]
    if info["standardize"]:
        x = (x - tensors["standardize.mean"]) / tensors["standardize.std"]
    z = x @ tensors["layers.0.weight"][:, 0] + tensors["layers.0.bias"][0]
    t = 2 * y - 1
    return np.mean(np.maximum(0, 1 - t * z) ** 2), np.mean((z > 0) == (y == 1)), z


@pytest.mark.mpi
def test_trained_squared_hinge_svm_is_evaluated_with_its_loss(tmp_path):
    rows = write_csv(tmp_path / "d.csv")
    out = tmp_path / "run"
    r = run_cli(1, "train", "--data", tmp_path / "d.csv", "--label-column", "label",
                "--model", "svm", "--loss", "squared_hinge", "--optimizer", "sgd",
                "--lr", "0.1", "--batch-size", "8", "--epochs", "1", "--standardize",
                "--dtype", "float64", "--progress", "none", "--out", out, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "model.json").read_text())
    assert (info["kind"], info["loss"]) == ("svm", "squared_hinge")
    loss, accuracy, margins = replay(out, rows)
    assert (np.abs(margins) < 1).any()  # rows inside the margin: the loss is not 0

    r = run_cli(2, "evaluate", "--model", out, "--data", tmp_path / "d.csv",
                timeout=120)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["n"] == len(rows)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(accuracy, rel=1e-12)

    import mpi_dml

    svm = mpi_dml.load(out)  # one process: the estimator rebuilt from the same files
    assert type(svm).__name__ == "LinearSVC" and svm._model.loss == "squared_hinge"
    frame = pd.DataFrame(rows[:, :3], columns=list(FEATURES))  # as fitted: named columns
    np.testing.assert_allclose(svm.decision_function(frame), margins, rtol=1e-12, atol=1e-12)
