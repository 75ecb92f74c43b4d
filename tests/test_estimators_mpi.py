"""The estimators on real ranks: what every rank count gives, against the command line.

    $ python -m pytest -q tests/test_estimators_mpi.py

Each rank holds an uneven share of the rows (one rank none, from 3 ranks on). At every
rank count in ``conftest.RANKS`` one run of ``mpi_scripts/estimators_run.py`` fits
every estimator, saves it, loads the command line's models and provokes errors that
only one rank sees. What it wrote is compared with independent results: the models
``python -m mpi_dml train`` wrote for the same rows concatenated in one CSV (one plain
process), its ``predict`` files, ``evaluate`` on the saved folders, and scikit-learn's
accuracy and R^2 of the gathered predictions.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from sklearn.metrics import accuracy_score, r2_score

from conftest import RANKS, run_cli, run_mpi

pytestmark = pytest.mark.mpi
pytest.importorskip("pandas")

SCRIPT = Path(__file__).parent / "mpi_scripts" / "estimators_run.py"

# name -> (class, parameters, dataset, the same settings as command-line flags, written
# out by hand so that the parameter mapping is checked too).
ESTIMATORS = {
    "logistic_multi": (
        "LogisticRegression",
        dict(solver="sgd", learning_rate_init=0.05, momentum=0.9, nesterovs_momentum=True,
             alpha=1e-3, batch_size=16, max_iter=4, tol=0, random_state=3),
        "multi",
        ["--model", "softmax", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9",
         "--nesterov", "--weight-decay", "1e-3", "--batch-size", "16", "--epochs", "4",
         "--seed", "3"]),
    "logistic_binary": (
        "LogisticRegression",
        dict(solver="adam", learning_rate_init=0.05, batch_size=10, max_iter=3, tol=None,
             random_state=5, shards=7),
        "binary",
        ["--model", "logistic", "--optimizer", "adam", "--lr", "0.05", "--weight-decay",
         "1e-4", "--batch-size", "10", "--epochs", "3", "--seed", "5", "--shards", "7"]),
    "svc": (
        "LinearSVC",
        dict(solver="adamw", loss="hinge", alpha=1e-2, learning_rate_init=0.02,
             batch_size=12, max_iter=3, tol=0, random_state=1, beta_1=0.8, epsilon=1e-7),
        "binary",
        ["--model", "svm", "--optimizer", "adamw", "--weight-decay", "1e-2", "--lr", "0.02",
         "--batch-size", "12", "--epochs", "3", "--seed", "1", "--beta1", "0.8",
         "--eps", "1e-7"]),
    "mlp_clf": (
        "MLPClassifier",
        dict(hidden_layer_sizes=[6], activation="tanh", learning_rate_init=0.01,
             batch_size=16, max_iter=3, tol=0, random_state=2),
        "multi",
        ["--model", "mlp", "--hidden", "6", "--activation", "tanh", "--optimizer", "adam",
         "--lr", "0.01", "--weight-decay", "1e-4", "--batch-size", "16", "--epochs", "3",
         "--seed", "2"]),
    "linreg": (
        "LinearRegression",
        dict(solver="sgd", momentum=0.5, nesterovs_momentum=False, learning_rate_init=0.05,
             schedule="cosine", warmup_steps=3, batch_size=8, max_iter=3, tol=0,
             random_state=4),
        "regression",
        ["--model", "linear", "--optimizer", "sgd", "--momentum", "0.5", "--lr", "0.05",
         "--schedule", "cosine", "--warmup-steps", "3", "--batch-size", "8", "--epochs", "3",
         "--seed", "4"]),
    "mlp_reg": (
        "MLPRegressor",
        dict(hidden_layer_sizes=[5, 3], alpha=1e-3, learning_rate_init=0.01, batch_size=16,
             max_iter=6, tol=1e-2, n_iter_no_change=2, random_state=6),
        "regression",
        ["--model", "mlp", "--task", "regression", "--hidden", "5,3", "--weight-decay",
         "1e-3", "--optimizer", "adam", "--lr", "0.01", "--batch-size", "16", "--epochs", "6",
         "--tol", "1e-2", "--n-iter-no-change", "2", "--seed", "6"]),
}
COMMON_FLAGS = ["--dtype", "float64", "--standardize", "--label-column", "target",
                "--progress", "none", "--device", "cpu"]
MULTI_LABELS = np.array([2, 5, 7, 11])
BINARY_LABELS = np.array(["no", "yes"])


def make_data():
    """Train and test rows of three datasets, features far from zero (standardize)."""
    rng = np.random.default_rng(0)
    data = {}
    for name, d, k in (("multi", 5, 4), ("binary", 4, 2)):
        centers = rng.normal(scale=1.5, size=(k, d))
        for part, n in (("train", 97), ("test", 41)):
            idx = rng.integers(k, size=n)
            data[f"{name}_{part}_x"] = 100 + centers[idx] + rng.normal(size=(n, d))
            labels = MULTI_LABELS if name == "multi" else BINARY_LABELS
            data[f"{name}_{part}_y"] = labels[idx]
    w = rng.normal(size=5)
    for part, n in (("train", 89), ("test", 37)):
        x = rng.normal(loc=20, scale=3, size=(n, 5))
        data[f"regression_{part}_x"] = x
        data[f"regression_{part}_y"] = x @ w + 0.1 * rng.normal(size=n)
    return data


def write_csv(path, x, y, dataset):
    """The rows as the command line reads them: classes by their index in the sorted
    labels, every value with all its digits."""
    prefix = "x" if dataset == "regression" else "f"
    if dataset != "regression":
        y = np.searchsorted(np.unique(y), y)
    header = ",".join([f"{prefix}{j}" for j in range(x.shape[1])] + ["target"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="",
               fmt="%.17g")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data, its CSVs, the command line's models and predictions, and a lazily
    filled map from rank count to the script's output folder."""
    root = tmp_path_factory.mktemp("estimators")
    data = make_data()
    np.savez(root / "data.npz", **data)
    for dataset in ("multi", "binary", "regression"):
        for part in ("train", "test"):
            write_csv(root / f"{dataset}_{part}.csv", data[f"{dataset}_{part}_x"],
                      data[f"{dataset}_{part}_y"], dataset)
    cli = {}
    for name, (_, _, dataset, flags) in ESTIMATORS.items():
        out = root / "cli" / name
        done = run_cli(0, "train", "--data", root / f"{dataset}_train.csv", "--out", out,
                       *COMMON_FLAGS, *flags)
        assert done.returncode == 0, done.stderr
        preds = root / "cli" / f"{name}.csv"
        done = run_cli(0, "predict", "--model", out, "--data", root / f"{dataset}_test.csv",
                       "--output", preds)
        assert done.returncode == 0, done.stderr
        cli[name] = (out, np.genfromtxt(preds, delimiter=",", names=True))
    spec = {"data": str(root / "data.npz"),
            "estimators": {k: v[:3] for k, v in ESTIMATORS.items()},
            "cli_models": {k: (str(cli[k][0]), v[2]) for k, v in ESTIMATORS.items()}}
    (root / "spec.json").write_text(json.dumps(spec))
    return {"root": root, "data": data, "cli": cli, "runs": {}}


def run(world, n) -> Path:
    """The script's output at ``n`` ranks (run once per rank count)."""
    if n not in world["runs"]:
        out = world["root"] / f"n{n}"
        (out / "saved").mkdir(parents=True)
        done = run_mpi(n, ["-m", "mpi4py", SCRIPT, world["root"] / "spec.json", out],
                       timeout=400)
        assert done.returncode == 0, done.stdout + done.stderr
        world["runs"][n] = out
    return world["runs"][n]


def cli_layers(folder):
    """(weight, bias) per layer of a command-line model on the raw features, folded
    here from its tensor file: W / std, b - (mean / std) @ W."""
    t = load_file(str(Path(folder) / "model.safetensors"))
    layers = [(t[f"layers.{i}.weight"], t[f"layers.{i}.bias"])
              for i in range(sum(k.endswith(".weight") for k in t))]
    mean, std = t["standardize.mean"], t["standardize.std"]
    w, b = layers[0]
    layers[0] = (w / std[:, None], b - (mean / std) @ w)
    return layers, t


def as_layers(name, got):
    """The script's fitted arrays as (weight, bias) per layer, scikit-learn's shapes
    undone."""
    cls = ESTIMATORS[name][0]
    arrays = [got[f"layer_{i}"] for i in range(sum(k.startswith("layer_") for k in got))]
    if cls.startswith("MLP"):
        half = len(arrays) // 2
        return list(zip(arrays[:half], arrays[half:]))
    coef, intercept = arrays
    return [(coef.reshape(-1, 1) if cls == "LinearRegression" else coef.T, intercept)]


def close(a, b, rtol=1e-6):
    """Within ``rtol`` of the larger magnitudes of ``b`` (parameters cross zero)."""
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_fit_is_the_command_line_model(world, n, name):
    got = dict(np.load(run(world, n) / f"{name}.npz"))
    layers, tensors = cli_layers(world["cli"][name][0])
    for (w, b), (cw, cb) in zip(as_layers(name, got), layers):
        close(w, cw)
        close(b, cb)
    assert got["dtype"] == "float64"
    dataset = ESTIMATORS[name][2]
    x = world["data"][f"{dataset}_train_x"]  # the standardization, from NumPy
    np.testing.assert_allclose(got["mean"], x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(got["std"], x.std(axis=0), rtol=1e-12)
    info = json.loads((world["cli"][name][0] / "model.json").read_text())
    epochs = [json.loads(line)["train_loss"] for line in
              (world["cli"][name][0] / "metrics.jsonl").read_text().splitlines()]
    assert int(got["n_iter"]) == len(epochs)
    np.testing.assert_allclose(got["loss_curve"], epochs, rtol=1e-9)
    assert info["metrics"]["train_loss"] == pytest.approx(epochs[-1], rel=1e-9)


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_predictions_and_collective_score(world, n, name):
    got = dict(np.load(run(world, n) / f"{name}.npz"))
    dataset = ESTIMATORS[name][2]
    y_test = world["data"][f"{dataset}_test_y"]
    cli = world["cli"][name][1]
    if dataset == "regression":
        close(got["predict"], cli["prediction"], rtol=1e-8)
        assert float(got["score"]) == pytest.approx(r2_score(y_test, got["predict"]),
                                                    rel=1e-12)
        return
    labels = MULTI_LABELS if dataset == "multi" else BINARY_LABELS
    np.testing.assert_array_equal(got["classes"], labels)
    np.testing.assert_array_equal(got["predict"], labels[cli["prediction"].astype(int)])
    assert float(got["score"]) == pytest.approx(accuracy_score(y_test, got["predict"]),
                                                abs=1e-15)
    if "predict_proba" in got:
        probs = np.column_stack([cli[f"prob_{k}"] for k in range(len(labels))])
        np.testing.assert_allclose(got["predict_proba"], probs, rtol=1e-5, atol=1e-12)  # %.6g
    scores = got["decision_function"]
    assert scores.shape == ((len(y_test),) if len(labels) == 2 else (len(y_test), 4))


@pytest.mark.parametrize("name", ["logistic_binary", "mlp_clf", "linreg"])
def test_saved_model_evaluates_with_the_command_line(world, name):
    """Saved at the largest rank count; string labels, numbers, a regression."""
    out = run(world, RANKS[-1])
    dataset = ESTIMATORS[name][2]
    folder = out / "saved" / name
    info = json.loads((folder / "model.json").read_text())
    assert info["label_column"] == "target"
    if dataset == "multi":
        assert info["classes"] == MULTI_LABELS.tolist()
    elif dataset == "binary":
        assert info["classes"] == [0, 1]
        assert info["class_labels"] == BINARY_LABELS.tolist()
    done = run_cli(0, "evaluate", "--model", folder, "--data",
                   world["root"] / f"{dataset}_test.csv")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    score = float(np.load(out / f"{name}.npz")["score"])
    key = "r2" if dataset == "regression" else "accuracy"
    assert metrics[key] == pytest.approx(score, rel=1e-9)


@pytest.mark.parametrize("n", RANKS)
def test_load_predicts_what_the_command_line_predicts(world, n):
    out = run(world, n)
    for name, (cls, _, dataset, _) in ESTIMATORS.items():
        got = dict(np.load(out / f"loaded_{name}.npz"))
        assert str(got["cls"]) == cls
        cli = world["cli"][name][1]
        if dataset == "regression":
            np.testing.assert_allclose(got["predict"], cli["prediction"], rtol=1e-9)
        else:
            # The command line numbers the classes 0 .. K-1; so does its model folder.
            np.testing.assert_array_equal(got["predict"], cli["prediction"].astype(int))
        if "predict_proba" in got:
            k = got["predict_proba"].shape[1]
            probs = np.column_stack([cli[f"prob_{c}"] for c in range(k)])
            np.testing.assert_allclose(got["predict_proba"], probs, rtol=1e-5, atol=1e-12)  # %.6g
        layers, _ = cli_layers(world["cli"][name][0])
        for (w, b), (cw, cb) in zip(as_layers(name, got), layers):
            close(w, cw, rtol=1e-12)
            close(b, cb, rtol=1e-12)


@pytest.mark.parametrize("n", RANKS)
def test_an_error_on_one_rank_is_raised_on_every_rank(world, n):
    """And rows of float32 on one rank and float64 on others train in float64."""
    report = json.loads((run(world, n) / "errors.json").read_text())
    ranks = report["ranks"]
    assert len(ranks) == n
    last = n - 1
    expected = {
        "nan_on_last": ("ValueError", "Input X contains NaN", True),
        "third_class_on_last": ("ValueError", "Only binary classification is supported",
                                False),
        "bad_param": ("ValueError", "The 'learning_rate_init' parameter of MLPClassifier "
                      "must be > 0. Got -1.0 instead.", False),
        "bad_param_on_last": ("ValueError", "The 'alpha' parameter of MLPRegressor must be "
                              ">= 0. Got -1.0 instead.", True),
        "one_class": ("ValueError", "only one class: 7", False),
        "load_missing": ("ValueError", "model.json is missing", False),
        "score_wrong_width_on_last": ("ValueError", "X has 4 features, but "
                                      "LogisticRegression is expecting 5 features", True),
    }
    if n > 1:
        expected["width_differs_on_last"] = ("ValueError", "same number of features on "
                                             "every rank", False)
    assert {r["dtype"] for r in ranks} == {"float32" if n == 1 else "float64"}
    assert set(ranks[0]["cases"]) == set(expected)
    for case, (kind, text, one_rank) in expected.items():
        seen = [r["cases"][case] for r in ranks]
        assert all(s is not None for s in seen), (case, seen)
        assert len({tuple(s) for s in seen}) == 1, (case, seen)  # the same everywhere
        assert seen[0][0] == kind, (case, seen[0])
        assert text in seen[0][1], (case, seen[0])
        if one_rank and n > 1:
            assert f"(on rank {last} of {n})" in seen[0][1]
