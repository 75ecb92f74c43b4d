"""Which columns a model learns from, end to end under real mpiexec.

Features are named, never guessed: in an ``.npz`` only the columns of ``X`` are
features unless ``--features`` names others; evaluate and predict take the model's
features from a file by name. A near-constant column cannot wreck a standardized model.
"""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_cli

pytestmark = pytest.mark.mpi

FLAGS = ("--model", "logistic", "--optimizer", "sgd", "--lr", "0.05", "--batch-size", "32",
         "--epochs", "3", "--dtype", "float64", "--standardize", "--shards", "64",
         "--progress", "none")


@pytest.fixture(scope="module")
def cancer():
    """Breast-cancer rows (real data shipped with scikit-learn), 80/20 split."""
    pytest.importorskip("sklearn")
    from mpi_dml.data.bundled import load, stratified_split
    x, y, names = load("breast_cancer")
    train, test = stratified_split(y, 0.2, seed=0)
    return (x[train], y[train]), (x[test], y[test]), names


def train(n, data, out, *extra, label="label"):
    r = run_cli(n, "train", "--data", data, "--label-column", label, "--out", out, *FLAGS,
                *extra, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def params(out):
    return load_file(str(out / "model.safetensors"))


def write_csv(path, columns: dict):
    names = list(columns)
    table = np.column_stack([np.asarray(columns[c], dtype=np.float64) for c in names])
    np.savetxt(path, table, delimiter=",", header=",".join(names), comments="", fmt="%.17g")
    return path


@pytest.mark.parametrize("n", [0, 2])
def test_npz_arrays_beside_x_are_not_features(cancer, tmp_path, n):
    """Row ids and weights stored next to X change nothing, and a note names them."""
    (x, y), _, names = cancer
    rng = np.random.default_rng(0)
    plain = tmp_path / "plain.npz"
    np.savez(plain, X=x, y=y, feature_names=np.array(names))
    extras = tmp_path / "extras.npz"
    np.savez(extras, X=x, y=y, feature_names=np.array(names), row_id=np.arange(len(y)) * 1000,
             weight=rng.random(len(y)))
    train(n, plain, tmp_path / "a", label="y")
    r = train(n, extras, tmp_path / "b", label="y")
    assert r.stderr.count("columns row_id, weight not used as features") == 1, r.stderr
    a, b = params(tmp_path / "a"), params(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert json.loads((tmp_path / "b" / "model.json").read_text())["feature_names"] == names


@pytest.mark.parametrize("n", [0, 3])
def test_named_features_train_the_model_of_those_columns(cancer, tmp_path, n):
    """--features a,b on a wide file = training on a file holding only a and b."""
    (x, y), _, names = cancer
    chosen = [names[7], names[2], names[20]]
    wide = write_csv(tmp_path / "wide.csv", {**{c: x[:, i] for i, c in enumerate(names)},
                                             "label": y})
    narrow = write_csv(tmp_path / "narrow.csv", {**{c: x[:, names.index(c)] for c in chosen},
                                                 "label": y})
    train(n, narrow, tmp_path / "narrow")
    r = train(n, wide, tmp_path / "wide", "--features", ",".join(chosen))
    assert "not used as features" in r.stderr  # the other 27 columns, named once
    a, b = params(tmp_path / "narrow"), params(tmp_path / "wide")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    info = json.loads((tmp_path / "wide" / "model.json").read_text())
    assert info["feature_names"] == chosen and info["config"]["features"] == chosen


@pytest.mark.parametrize("n", [0, 2])
def test_named_features_reach_arrays_beside_x(cancer, tmp_path, n):
    (x, y), _, names = cancer
    path = tmp_path / "d.npz"
    np.savez(path, X=x[:, :3], y=y, extra=x[:, 3])
    train(n, path, tmp_path / "o", "--features", "x2,extra,x0", label="y")
    info = json.loads((tmp_path / "o" / "model.json").read_text())
    assert info["feature_names"] == ["x2", "extra", "x0"]
    assert params(tmp_path / "o")["layers.0.weight"].shape == (3, 1)


@pytest.mark.parametrize("flags,message", [
    (("--features", "mean_radius,nope"), "has no column named 'nope' (in --features)"),
    (("--features", "mean_radius,label"), "--features names the label column 'label'"),
    (("--features", "mean_radius,mean_radius"), "'features' parameter of TrainConfig must name each column once"),
])
def test_bad_feature_names_are_refused(cancer, tmp_path, flags, message):
    (x, y), _, names = cancer
    data = write_csv(tmp_path / "d.csv", {**{c: x[:, i] for i, c in enumerate(names)}, "label": y})
    r = run_cli(2, "train", "--data", data, "--label-column", "label", "--out", tmp_path / "o",
                *FLAGS, *flags, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count(message) == 1 and r.stderr.count("error:") == 1, r.stderr
    assert not (tmp_path / "o" / "model.json").exists()


@pytest.mark.parametrize("n", [0, 2])
def test_evaluate_and_predict_take_the_model_features_by_name(cancer, tmp_path, n):
    """Columns reordered and an id column added: the same predictions and metrics."""
    (x, y), (xt, yt), names = cancer
    data = write_csv(tmp_path / "train.csv", {**{c: x[:, i] for i, c in enumerate(names)},
                                              "label": y})
    train(n, data, tmp_path / "m")
    same = write_csv(tmp_path / "test.csv", {**{c: xt[:, i] for i, c in enumerate(names)},
                                             "label": yt})
    shuffled = {"label": yt, "row_id": np.arange(len(yt)),
                **{c: xt[:, names.index(c)] for c in reversed(names)}}
    moved = write_csv(tmp_path / "moved.csv", shuffled)
    outputs = {}
    for path in (same, moved):
        ev = run_cli(n, "evaluate", "--model", tmp_path / "m", "--data", path, timeout=60)
        pr = run_cli(n, "predict", "--model", tmp_path / "m", "--data", path, "--output",
                     tmp_path / f"{path.stem}.pred.csv", timeout=60)
        assert ev.returncode == 0 and pr.returncode == 0, ev.stderr + pr.stderr
        outputs[path.stem] = (json.loads(ev.stdout), (tmp_path / f"{path.stem}.pred.csv").read_text())
        if path is moved:
            for result in (ev, pr):
                assert result.stderr.count("column row_id not used as features") == 1, result.stderr
    assert outputs["moved"] == outputs["test"]
    del shuffled[names[4]]
    missing = write_csv(tmp_path / "missing.csv", shuffled)
    r = run_cli(n, "predict", "--model", tmp_path / "m", "--data", missing, "--output",
                tmp_path / "x.csv", timeout=60)
    assert r.returncode == 2
    assert r.stderr.count(f"has no column named '{names[4]}', which the model was trained on") == 1
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("n", [0, 2])
def test_near_constant_feature_does_not_wreck_standardized_predictions(cancer, tmp_path, n):
    """A column of 0.1 give or take an ulp, and 0.2 at test time: the model predicts as
    well as one trained without the column (before, held-out accuracy fell to ~0.4)."""
    (x, y), (xt, yt), names = cancer
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(len(y)) < 0.3, np.nextafter(0.1, 1.0), 0.1)
    cols = {c: x[:, i] for i, c in enumerate(names)}
    test_cols = {c: xt[:, i] for i, c in enumerate(names)}
    without = write_csv(tmp_path / "without.csv", {**cols, "label": y})
    with_col = write_csv(tmp_path / "with.csv", {**cols, "almost": noisy, "label": y})
    test_without = write_csv(tmp_path / "t1.csv", {**test_cols, "label": yt})
    test_with = write_csv(tmp_path / "t2.csv", {**test_cols, "almost": np.full(len(yt), 0.2),
                                                "label": yt})
    scores = []
    for data, test, out in ((without, test_without, "a"), (with_col, test_with, "b")):
        train(n, data, tmp_path / out)
        r = run_cli(n, "evaluate", "--model", tmp_path / out, "--data", test, timeout=60)
        assert r.returncode == 0, r.stderr
        scores.append(json.loads(r.stdout))
    plain, noisy_run = scores
    assert plain["accuracy"] > 0.9
    assert noisy_run["accuracy"] >= plain["accuracy"] - 0.01
    assert noisy_run["loss"] <= plain["loss"] * 1.05
