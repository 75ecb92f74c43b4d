"""LIBSVM files through the command line: train, evaluate and predict, under real
mpiexec.

    $ .venv/bin/python -m pytest -q tests/test_libsvm_cli_mpi.py

Digits written as LIBSVM by scikit-learn's ``dump_svmlight_file`` must train the same
model as the same rows in CSV (float64, within 1e-6) at every rank count, and evaluate
and predict must give the CSV's figures and prediction file. Bad input must stop the
job with one message naming the file and line, exit status 2, writing nothing, at 1
and 2 ranks.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import RANKS, run_cli

pytestmark = pytest.mark.mpi
load_file = pytest.importorskip("safetensors.numpy").load_file

TRAIN = ("--model", "softmax", "--dtype", "float64", "--epochs", "2", "--batch-size", "32",
         "--lr", "0.05", "--seed", "3")


@pytest.fixture(scope="module")
def both(digits, tmp_path_factory):
    """The digits rows as CSV and as LIBSVM (1-based, as LIBSVM's own tools write),
    and the CSV's model, metrics and predictions from one process."""
    from sklearn.datasets import dump_svmlight_file

    folder = tmp_path_factory.mktemp("libsvm_cli")
    paths = {}
    for part, csv in zip(("train", "test"), digits):
        table = np.loadtxt(csv, delimiter=",", skiprows=1)
        header = csv.read_text().split("\n", 1)[0].split(",")
        label = header.index("label")
        x, y = np.delete(table, label, axis=1), table[:, label]
        svm = folder / f"{part}.svm"
        dump_svmlight_file(x, y.astype(int), str(svm), zero_based=False)
        paths[part] = (csv, svm)
    out = folder / "csv-model"
    result = run_cli(0, "train", "--data", paths["train"][0], "--label-column", "label",
                     *TRAIN, "--out", out)
    assert result.returncode == 0, result.stderr
    evaluated = run_cli(0, "evaluate", "--model", out, "--data", paths["test"][0])
    assert evaluated.returncode == 0, evaluated.stderr
    predicted = run_cli(0, "predict", "--model", out, "--data", paths["test"][0],
                        "--output", folder / "csv-preds.csv")
    assert predicted.returncode == 0, predicted.stderr
    return {"paths": paths, "model": load_file(str(out / "model.safetensors")),
            "metrics": json.loads(evaluated.stdout), "preds": folder / "csv-preds.csv"}


@pytest.mark.parametrize("n", RANKS)
def test_libsvm_digits_train_the_csv_model(both, tmp_path, n):
    out = tmp_path / "svm-model"
    result = run_cli(n, "train", "--data", both["paths"]["train"][1], *TRAIN, "--out", out)
    assert result.returncode == 0, result.stderr
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == both["model"].keys()
    for key, value in both["model"].items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-6, err_msg=key)
    info = json.loads((out / "model.json").read_text())
    assert info["feature_names"] is None and info["layers"][0][0] == 64
    if n != 3:
        return
    test_svm = both["paths"]["test"][1]
    evaluated = run_cli(n, "evaluate", "--model", out, "--data", test_svm)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["n"] == both["metrics"]["n"]
    assert metrics["accuracy"] == pytest.approx(both["metrics"]["accuracy"], abs=1e-12)
    assert metrics["loss"] == pytest.approx(both["metrics"]["loss"], rel=1e-6)
    preds = tmp_path / "preds.csv"
    predicted = run_cli(n, "predict", "--model", out, "--data", test_svm, "--output", preds)
    assert predicted.returncode == 0, predicted.stderr
    mine = np.loadtxt(preds, delimiter=",", skiprows=1)
    theirs = np.loadtxt(both["preds"], delimiter=",", skiprows=1)
    np.testing.assert_array_equal(mine[:, 0], theirs[:, 0])  # the predicted classes
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)


# --- bad input ----------------------------------------------------------------------------
GOOD = "1 1:0.5 3:2\n0 2:1.5\n1 1:1 2:1 3:1\n0 3:-1\n"
CASES = {
    "a token 3:abc": ("1 1:0.5 3:abc\n", "t.svm line 5: in '3:abc' the value is not a number"),
    "index 0 in 1-based mode": ("0 0:1 2:2\n", "t.svm line 5: '0:1' has index 0, but indices "
                                               "are 1-based; pass --zero-based"),
    "indices not increasing": ("1 3:1 2:1\n", "t.svm line 5: '2:1' follows index 3; indices "
                                              "must be strictly increasing"),
    "a non-numeric label": ("yes 1:1\n", "t.svm line 5: the label 'yes' is not a number"),
    "an index beyond --num-features": ("1 1:1 9:1\n",
                                       "t.svm line 5: '9:1' has index 9, beyond --num-features 4"),
}


@pytest.mark.parametrize("n", [0, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_libsvm_input_stops_training_with_one_message(tmp_path, case, n):
    line, message = CASES[case]
    data = tmp_path / "t.svm"
    data.write_text(GOOD + line + GOOD)
    out = tmp_path / "out"
    result = run_cli(n, "train", "--data", data, "--num-features", "4", "--model", "logistic",
                     "--out", out, "--epochs", "1", "--batch-size", "4", timeout=90)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(message) == 1, result.stderr
    assert result.stderr.count("mpi_dml: error") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("n", [0, 2])
def test_a_model_is_not_applied_to_rows_with_more_features(tmp_path, n):
    data = tmp_path / "t.svm"
    data.write_text(GOOD * 4)
    model = tmp_path / "m"
    trained = run_cli(0, "train", "--data", data, "--model", "logistic", "--out", model,
                      "--epochs", "1", "--batch-size", "4")
    assert trained.returncode == 0, trained.stderr
    wider = tmp_path / "wide.svm"
    wider.write_text(GOOD + "1 2:1 5:0.5\n" + GOOD)
    for command, extra in (("evaluate", ()), ("predict", ("--output", tmp_path / "p.csv"))):
        result = run_cli(n, command, "--model", model, "--data", wider, *extra, timeout=90)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("wide.svm line 5: '5:0.5' has index 5, beyond the 3 "
                                   "features of the model") == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "p.csv").exists()
