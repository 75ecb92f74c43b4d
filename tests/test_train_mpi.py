"""End to end under real mpiexec: training, evaluate and predict at 1-4 ranks."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import RANKS, run_cli

pytestmark = pytest.mark.mpi


def train(n, data, out, *extra, timeout=300):
    train_csv, test_csv = data
    result = run_cli(n, "train", "--data", train_csv, "--label-column", "label", "--out", out,
                     "--progress", "lines", *extra, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def tensors(out):
    return load_file(str(out / "model.safetensors"))


def max_relative_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for name in b:
        if name.startswith("standardize"):
            continue
        scale = np.maximum(np.abs(b[name]), 1e-8)
        worst = max(worst, float(np.max(np.abs(a[name] - b[name]) / scale)))
    return worst


MLP = ("--model", "mlp", "--hidden", "24,12", "--activation", "tanh", "--optimizer", "adam",
       "--lr", "0.01", "--weight-decay", "0.001", "--batch-size", "48", "--epochs", "3",
       "--dtype", "float64", "--standardize", "--val-fraction", "0.2", "--shards", "64",
       "--seed", "5", "--schedule", "cosine", "--warmup-steps", "5")
SOFTMAX = ("--model", "softmax", "--optimizer", "sgd", "--momentum", "0.9", "--nesterov",
           "--lr", "0.05", "--l1", "0.0001", "--batch-size", "33", "--epochs", "2",
           "--dtype", "float64", "--standardize")
# Plain SGD with L1 from zero weights: many weights have a batch gradient that is 0 in
# exact arithmetic and +-1e-17 in floating point, its sign set by the order of the sum
# (so by the rank count). L1 must stay continuous at 0 for this to train the same model.
SOFTMAX_L1 = ("--model", "softmax", "--optimizer", "sgd", "--lr", "0.01", "--l1", "0.0001",
              "--batch-size", "100", "--epochs", "3", "--seed", "7", "--dtype", "float64",
              "--standardize")


@pytest.mark.parametrize("flags", [MLP, SOFTMAX, SOFTMAX_L1],
                         ids=["mlp", "softmax", "softmax-l1"])
def test_same_model_on_any_number_of_ranks(digits, tmp_path, flags):
    models = {}
    for n in RANKS:
        out = tmp_path / f"n{n}"
        train(n, digits, out, *flags)
        models[n] = tensors(out)
        info = json.loads((out / "model.json").read_text())
        assert info["world_size"] == n
    for n in RANKS[1:]:
        assert max_relative_difference(models[n], models[1]) <= 1e-6, n


@pytest.mark.smoke
def test_default_job_reaches_095_on_digits(digits, tmp_path):
    """The README's main job: softmax on digits, 2 ranks, held-out accuracy >= 0.95."""
    out = tmp_path / "digits"
    result = run_cli(2, "train", "--config", "examples/digits.toml", "--data", digits[0],
                     "--val-data", digits[1], "--out", out, "--progress", "lines")
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "model.json").read_text())
    assert info["metrics"]["val_accuracy"] >= 0.95
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == info["config"]["epochs"]
    assert {"train_loss", "val_loss", "val_accuracy", "samples_per_s", "compute_s", "comm_s",
            "data_s"} <= set(lines[-1])
    assert result.stderr.count("epoch 1/") == 1  # rank 0 speaks, once

    scores = {}
    for n in (0, 3):
        ev = run_cli(n, "evaluate", "--model", out, "--data", digits[1], "--label-column", "label")
        assert ev.returncode == 0, ev.stderr
        scores[n] = json.loads(ev.stdout)
    assert scores[0]["accuracy"] >= 0.95
    assert scores[0]["n"] == len(digits[1].read_text().splitlines()) - 1
    assert scores[0]["accuracy"] == pytest.approx(info["metrics"]["val_accuracy"])
    assert scores[3] == pytest.approx(scores[0])


def test_predict_keeps_input_order_on_any_number_of_ranks(digits, tmp_path):
    out = tmp_path / "m"
    train(2, digits, out, "--model", "softmax", "--epochs", "10", "--lr", "0.05",
          "--standardize", "--dtype", "float64")
    outputs = {}
    for n in (0, 3, 4):
        dest = tmp_path / f"pred{n}.csv"
        pr = run_cli(n, "predict", "--model", out, "--data", digits[1], "--output", dest)
        assert pr.returncode == 0, pr.stderr
        outputs[n] = np.loadtxt(dest, delimiter=",", skiprows=1)
    assert outputs[0].shape == (len(digits[1].read_text().splitlines()) - 1, 11)
    for n in (3, 4):
        np.testing.assert_allclose(outputs[n], outputs[0], rtol=1e-5)
    truth = np.loadtxt(digits[1], delimiter=",", skiprows=1)[:, -1]
    assert (outputs[0][:, 0] == truth).mean() > 0.9


def test_logistic_matches_scikit_learn(breast_cancer, tmp_path):
    """Trained to convergence, held-out accuracy within 0.02 of sklearn's."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_csv, test_csv = breast_cancer
    tr = np.loadtxt(train_csv, delimiter=",", skiprows=1)
    te = np.loadtxt(test_csv, delimiter=",", skiprows=1)
    scaler = StandardScaler().fit(tr[:, :-1])
    # sklearn's default penalty is C=1 on the summed loss; the same L2 strength on our
    # mean loss is 1 / n_train (as weight decay, whose loss term is wd/2 * |w|^2).
    sk = LogisticRegression(max_iter=5000).fit(scaler.transform(tr[:, :-1]), tr[:, -1])
    sk_acc = sk.score(scaler.transform(te[:, :-1]), te[:, -1])

    out = tmp_path / "lr"
    train(2, breast_cancer, out, "--model", "logistic", "--optimizer", "sgd", "--momentum",
          "0.9", "--lr", "0.05", "--weight-decay", str(1.0 / len(tr)), "--batch-size", "32",
          "--epochs", "200", "--standardize", "--dtype", "float64", "--progress", "none",
          "--schedule", "cosine")
    ev = run_cli(2, "evaluate", "--model", out, "--data", test_csv, "--label-column", "label")
    ours = json.loads(ev.stdout)["accuracy"]
    assert abs(ours - sk_acc) <= 0.02, (ours, sk_acc)


@pytest.mark.parametrize("n", [0, 2])
def test_regression_models_report_r2(tmp_path, n):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.01 * rng.normal(size=300)
    path = tmp_path / "reg.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,c,target", comments="")
    for model in ("linear", "mlp"):
        out = tmp_path / f"{model}{n}"
        r = run_cli(n, "train", "--data", path, "--label-column", "target", "--model", model,
                    "--task", "regression", "--hidden", "16", "--optimizer", "adam", "--lr", "0.02",
                    "--epochs", "60", "--batch-size", "32", "--out", out, "--progress", "none")
        assert r.returncode == 0, r.stderr
        ev = run_cli(n, "evaluate", "--model", out, "--data", path)
        m = json.loads(ev.stdout)
        assert m["r2"] > 0.95 and m["n"] == 300, (model, m)


def test_more_ranks_than_rows(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text("a,b,label\n0,1,0\n1,0,1\n1,1,1\n")
    out = tmp_path / "tiny"
    r = run_cli(4, "train", "--data", path, "--label-column", "label", "--model", "logistic",
                "--batch-size", "4", "--epochs", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "model.json").read_text())["n_train"] == 3


def test_info_reports_world(tmp_path):
    r = run_cli(3, "info")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["world_size"] == 3
    assert sum(report["ranks_per_node"].values()) == 3
    assert report["threads"]["threads_per_rank"] >= 1
    assert report["mpi"]["library"] and report["mpi"]["standard"]


def test_numpy_formats_train_and_predict_like_csv(digits, tmp_path):
    """.npy and .npz give the same model as the CSV, and predict takes labelled or
    feature-only arrays."""
    table = np.loadtxt(digits[0], delimiter=",", skiprows=1)
    test = np.loadtxt(digits[1], delimiter=",", skiprows=1)
    np.save(tmp_path / "train.npy", table)
    np.savez(tmp_path / "train.npz", X=table[:, :-1], label=table[:, -1])
    np.save(tmp_path / "test.npy", test)
    np.save(tmp_path / "test_features.npy", test[:, :-1])
    flags = ("--model", "softmax", "--epochs", "2", "--dtype", "float64")
    runs = {"csv": (digits[0], "label"), "npy": (tmp_path / "train.npy", "64"),
            "npz": (tmp_path / "train.npz", "label")}
    models = {}
    for name, (path, label) in runs.items():
        out = tmp_path / name
        r = run_cli(2, "train", "--data", path, "--label-column", label, "--out", out, *flags)
        assert r.returncode == 0, r.stderr
        models[name] = tensors(out)
    for name in ("npy", "npz"):
        assert max_relative_difference(models[name], models["csv"]) <= 1e-12
    preds = []
    for data in ("test.npy", "test_features.npy"):
        dest = tmp_path / f"{data}.csv"
        r = run_cli(3, "predict", "--model", tmp_path / "npy", "--data", tmp_path / data,
                    "--output", dest)
        assert r.returncode == 0, r.stderr
        preds.append(dest.read_text())
    assert preds[0] == preds[1]
    assert len(preds[0].splitlines()) == len(test) + 1
