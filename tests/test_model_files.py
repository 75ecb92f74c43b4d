"""Model folders are input: every field of model.json and every tensor is checked.

    $ .venv/bin/python -m pytest -q tests/test_model_files.py

A real model is written with ``save_model``, then one field or tensor at a time is
damaged (the tensor file's SHA-256 in model.json is updated to match, so the damage is
what ``load_model`` must notice); each must be refused with one message that names the
file and the field. The end-to-end tests run ``evaluate`` and ``predict`` under mpiexec.
"""
import hashlib
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load, save

from conftest import run_cli
from mpi_dml.errors import UserError
from mpi_dml.io.model_files import load_model, save_model
from mpi_dml.models import build_model

FEATURES = ["a", "b", "c"]


def write_model(folder, kind="mlp", task="classification", n_classes=4, dtype="float32",
                standardize=True, seed=0):
    """A model as ``train`` writes it (same meta keys), with random non-zero parameters."""
    model = build_model(kind, task, len(FEATURES), n_classes, (5, 2), "tanh")
    params = np.random.default_rng(seed).normal(size=model.size).astype(dtype)
    scale = (np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.25, 3.0])) if standardize else None
    meta = {"task": task, "feature_names": list(FEATURES), "label_column": "label",
            "classes": list(range(n_classes)) if task == "classification" else None}
    save_model(folder, model, params, meta, scale)
    return model, params, scale


def read_pair(folder):
    info = json.loads((folder / "model.json").read_text())
    tensors = load((folder / "model.safetensors").read_bytes())
    return info, tensors


def write_pair(folder, info, tensors):
    """Write both files, with model.json recording the new tensor file's SHA-256."""
    blob = save(tensors, metadata={"format": "mpi_dml.model"})
    info = dict(info, tensors_sha256=hashlib.sha256(blob).hexdigest())
    (folder / "model.safetensors").write_bytes(blob)
    (folder / "model.json").write_text(json.dumps(info))


def set_key(key, value):
    def change(info):
        info[key] = value
    return change


def drop_key(key):
    def change(info):
        del info[key]
    return change


def set_layer(i, j, value):
    def change(info):
        info["layers"][i][j] = value
    return change


def one_output_softmax(info):
    info["layers"][2][1] = 1
    info["classes"] = [0]


# case -> (change to the model.json of an mlp classifier with layers 3-5-2-4, the
# text the one message must hold besides the file name)
JSON_CASES = {
    "format": (set_key("format", "other.model"), "'format' must be 'mpi_dml.model'"),
    "format_version 2": (set_key("format_version", 2), "'format_version' must be 1"),
    "format_version bool": (set_key("format_version", True), "'format_version' must be 1"),
    "format_version text": (set_key("format_version", "1"), "'format_version' must be 1"),
    "unknown kind": (set_key("kind", "forest"), "'kind' must be one of linear, logistic, "
                                                 "softmax, svm, mlp. Got 'forest' instead."),
    "kind missing": (drop_key("kind"), "'kind' must be one of"),
    "unknown loss": (set_key("loss", "cubic"), "'loss' must be one of squared, logistic, "
                                                "hinge, softmax, squared_hinge. Got 'cubic' "
                                                "instead."),
    "loss not text": (set_key("loss", ["softmax"]), "'loss' must be one of"),
    "loss unfit for kind": (set_key("loss", "hinge"), "'loss' must be softmax or squared "
                                                      "for kind mlp. Got 'hinge' instead."),
    "squared needs 1 output": (set_key("loss", "squared"), "must be 1 for loss squared"),
    "layers missing": (drop_key("layers"), "'layers' must be a non-empty list"),
    "layers empty": (set_key("layers", []), "'layers' must be a non-empty list"),
    "layers not a list": (set_key("layers", "3,5,2,4"), "'layers' must be a non-empty list"),
    "layer not a triple": (set_layer(1, slice(None), [5, 2]), "'layers' entry 1 must be"),
    "n_in bool": (set_layer(0, 0, True), "'layers' entry 0 n_in must be a positive integer. "
                                         "Got True instead."),
    "n_in float": (set_layer(0, 0, 3.0), "'layers' entry 0 n_in must be a positive integer"),
    "n_in text": (set_layer(0, 0, "3"), "'layers' entry 0 n_in must be a positive integer"),
    "n_out zero": (set_layer(1, 1, 0), "'layers' entry 1 n_out must be a positive integer. "
                                       "Got 0 instead."),
    "n_out negative": (set_layer(2, 1, -4), "'layers' entry 2 n_out must be a positive integer"),
    "sizes do not chain": (set_layer(1, 0, 6), "'layers' entry 1 n_in must equal entry 0's "
                                               "n_out (5). Got 6 instead."),
    "unknown activation": (set_layer(0, 2, "sigmoid"), "'layers' entry 0 activation must be "
                                                       "one of relu, tanh"),
    "hidden identity": (set_layer(1, 2, "identity"), "'layers' entry 1 activation must be "
                                                     "one of relu, tanh"),
    "last not identity": (set_layer(2, 2, "relu"), "'layers' entry 2 activation must be "
                                                   "identity"),
    "softmax with 1 output": (one_output_softmax,
                              "'layers' entry 2 n_out must be >= 2 for loss softmax"),
    "dtype float16": (set_key("dtype", "float16"), "'dtype' must be one of float32, float64. "
                                                   "Got 'float16' instead."),
    "dtype missing": (drop_key("dtype"), "'dtype' must be one of float32, float64"),
    "feature_names short": (set_key("feature_names", ["a", "b"]),
                            "'feature_names' must be null or a list of 3 non-empty strings"),
    "feature_names not a list": (set_key("feature_names", "abc"), "'feature_names' must be"),
    "feature name empty": (set_key("feature_names", ["a", "", "c"]), "'feature_names' must be"),
    "feature name number": (set_key("feature_names", ["a", 2, "c"]), "'feature_names' must be"),
    "feature_names missing": (drop_key("feature_names"), "'feature_names' must be"),
    "label_column number": (set_key("label_column", 7), "'label_column' must be a string. "
                                                        "Got 7 instead."),
    "label_column missing": (drop_key("label_column"), "'label_column' must be a string"),
    "classes too few": (set_key("classes", [0, 1]), "'classes' must be null or a list of 4"),
    "classes not a list": (set_key("classes", "0123"), "'classes' must be null or a list of 4"),
    "standardize text": (set_key("standardize", "yes"), "'standardize' must be true or false. "
                                                        "Got 'yes' instead."),
    "standardize number": (set_key("standardize", 1), "'standardize' must be true or false"),
    "sha256 short": (set_key("tensors_sha256", "abc123"), "'tensors_sha256' must be 64 "
                                                         "lowercase hexadecimal digits"),
    "sha256 missing": (drop_key("tensors_sha256"), "'tensors_sha256' must be 64"),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_bad_model_json_is_refused(tmp_path, case):
    write_model(tmp_path)
    change, message = JSON_CASES[case]
    info = json.loads((tmp_path / "model.json").read_text())
    change(info)
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(UserError) as raised:
        load_model(tmp_path)
    text = str(raised.value)
    assert text.startswith(f"{tmp_path / 'model.json'}: "), text
    assert message in text, text


# Pairs each kind with a loss it must not have; the width rule is not the one hit.
@pytest.mark.parametrize("kind,loss", [("linear", "logistic"), ("logistic", "hinge"),
                                       ("svm", "logistic"), ("softmax", "squared"),
                                       ("linear", "softmax")])
def test_kind_and_loss_must_fit(tmp_path, kind, loss):
    task = "regression" if kind == "linear" else "classification"
    write_model(tmp_path, kind, task, n_classes=0 if task == "regression" else 2)
    info = json.loads((tmp_path / "model.json").read_text())
    info["loss"] = loss
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=f"'loss' must be [a-z_ ]+ for kind {kind}. "
                                        f"Got '{loss}' instead."):
        load_model(tmp_path)


def test_linear_models_have_one_layer(tmp_path):
    write_model(tmp_path, "logistic", n_classes=2)
    info = json.loads((tmp_path / "model.json").read_text())
    info["layers"] = [[3, 2, "relu"], [2, 1, "identity"]]
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="'layers' must hold exactly one layer for kind "
                                        "logistic. Got 2 layers instead."):
        load_model(tmp_path)


def test_classes_of_a_regression_model_must_be_null(tmp_path):
    write_model(tmp_path, "mlp", "regression", n_classes=0)
    info = json.loads((tmp_path / "model.json").read_text())
    info["classes"] = [0, 1]
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="'classes' must be null for loss squared"):
        load_model(tmp_path)


@pytest.mark.parametrize("text,message", [("[1, 2]", "must hold a JSON object"),
                                          ("{\"format\": ", "is not valid JSON")])
def test_model_json_that_is_not_an_object_is_refused(tmp_path, text, message):
    write_model(tmp_path)
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(UserError, match=message):
        load_model(tmp_path)


def _add(name, value):
    def change(t):
        t[name] = value
    return change


def _drop(name):
    def change(t):
        del t[name]
    return change


def _poke(name, value, at=0):
    def change(t):
        t[name] = t[name].copy()
        t[name].flat[at] = value
    return change


def _transpose(name):
    def change(t):
        t[name] = np.ascontiguousarray(t[name].T)
    return change


def _cast(names, dtype):
    def change(t):
        for name in names:
            t[name] = t[name].astype(dtype)
    return change


LAYER_TENSORS = [f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")]

# case -> (dtype the model is saved in, change to the tensors, text of the message)
TENSOR_CASES = {
    "extra tensor": ("float32", _add("layers.3.weight", np.zeros((4, 1), np.float32)),
                     "holds tensor 'layers.3.weight', which model.json does not describe"),
    "missing tensor": ("float32", _drop("layers.1.bias"), "lacks tensor 'layers.1.bias'"),
    "float32 under float64": ("float64", _cast(LAYER_TENSORS, np.float32),
                              "tensor 'layers.0.weight' must be float64"),
    "float64 under float32": ("float32", _cast(["layers.2.bias"], np.float64),
                              "tensor 'layers.2.bias' must be float32"),
    "transposed weight": ("float32", _transpose("layers.1.weight"),
                          "tensor 'layers.1.weight' must be float32 of shape (5, 2)"),
    "nan weight": ("float32", _poke("layers.0.weight", np.nan, 4),
                   "tensor 'layers.0.weight' must hold finite values"),
    "inf bias": ("float64", _poke("layers.2.bias", -np.inf, 1),
                 "tensor 'layers.2.bias' must hold finite values"),
    "std missing": ("float32", _drop("standardize.std"), "lacks tensor 'standardize.std'"),
    "mean of wrong length": ("float32", _add("standardize.mean", np.zeros(4)),
                             "tensor 'standardize.mean' must be float64 of shape (3,)"),
    "std float32": ("float32", _cast(["standardize.std"], np.float32),
                    "tensor 'standardize.std' must be float64"),
    "std zero": ("float32", _poke("standardize.std", 0.0, 1),
                 "tensor 'standardize.std' must hold positive values"),
    "std negative": ("float64", _poke("standardize.std", -2.0, 2),
                     "tensor 'standardize.std' must hold positive values"),
    "mean nan": ("float32", _poke("standardize.mean", np.nan, 0),
                 "tensor 'standardize.mean' must hold finite values"),
}


@pytest.mark.parametrize("case", list(TENSOR_CASES))
def test_bad_tensors_are_refused(tmp_path, case):
    dtype, change, message = TENSOR_CASES[case]
    write_model(tmp_path, dtype=dtype)
    info, tensors = read_pair(tmp_path)
    change(tensors)
    write_pair(tmp_path, info, tensors)
    with pytest.raises(UserError) as raised:
        load_model(tmp_path)
    text = str(raised.value)
    assert text.startswith(f"{tmp_path / 'model.safetensors'}: "), text
    assert message in text, text


def test_standardization_tensors_without_standardize_are_refused(tmp_path):
    write_model(tmp_path, standardize=True)
    info, tensors = read_pair(tmp_path)
    write_pair(tmp_path, dict(info, standardize=False), tensors)
    with pytest.raises(UserError, match="holds tensor 'standardize.mean', which model.json "
                                        "does not describe"):
        load_model(tmp_path)


def test_tensor_of_a_type_numpy_lacks_is_refused(tmp_path):
    """bfloat16 has no NumPy dtype: the safetensors reader fails, which must be a message."""
    write_model(tmp_path, standardize=False)
    header = json.dumps({"layers.0.weight": {"dtype": "BF16", "shape": [3, 5],
                                             "data_offsets": [0, 30]}}).encode()
    blob = struct.pack("<Q", len(header)) + header + bytes(30)
    info = json.loads((tmp_path / "model.json").read_text())
    info["tensors_sha256"] = hashlib.sha256(blob).hexdigest()
    (tmp_path / "model.safetensors").write_bytes(blob)
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file"):
        load_model(tmp_path)


@pytest.mark.parametrize("kind,task,n_classes", [("linear", "regression", 0),
                                                 ("logistic", "classification", 2),
                                                 ("svm", "classification", 2),
                                                 ("softmax", "classification", 3),
                                                 ("mlp", "classification", 4),
                                                 ("mlp", "regression", 0)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("standardize", [False, True])
def test_every_model_save_model_writes_loads_back(tmp_path, kind, task, n_classes, dtype,
                                                  standardize):
    model, params, scale = write_model(tmp_path, kind, task, n_classes, dtype, standardize)
    loaded = load_model(tmp_path)
    assert (loaded.model.kind, loaded.model.loss) == (model.kind, model.loss)
    assert loaded.model.layers == model.layers
    assert loaded.params.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded.params, params)
    if standardize:
        np.testing.assert_array_equal(loaded.standardize[0], scale[0])
        np.testing.assert_array_equal(loaded.standardize[1], scale[1])
    else:
        assert loaded.standardize is None


def test_every_case_damages_a_model_that_loads(tmp_path):
    """The damage cases start from a model that is itself accepted."""
    for dtype in ("float32", "float64"):
        folder = tmp_path / dtype
        write_model(folder, dtype=dtype)
        info, tensors = read_pair(folder)
        write_pair(folder, info, tensors)  # rewritten as the damage cases are, undamaged
        load_model(folder)


# --- end to end: evaluate and predict under mpiexec --------------------------------

def _csv(path, n=6):
    rng = np.random.default_rng(1)
    rows = [f"{a:.3f},{b:.3f},{c:.3f},{int(a > 0)}" for a, b, c in rng.normal(size=(n, 3))]
    path.write_text("a,b,c,label\n" + "".join(r + "\n" for r in rows))
    return path


def _unknown_loss(folder):
    info = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(dict(info, loss="cubic")))
    return ("model.json: 'loss' must be one of squared, logistic, hinge, softmax, "
            "squared_hinge. Got 'cubic'")


def _float32_tensors_under_float64(folder):
    info, tensors = read_pair(folder)
    write_pair(folder, info, {k: v.astype(np.float32) if k.startswith("layers") else v
                              for k, v in tensors.items()})
    return "model.safetensors: tensor 'layers.0.weight' must be float64"


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("damage", [_unknown_loss, _float32_tensors_under_float64],
                         ids=["unknown loss", "float32 tensors under float64"])
def test_damaged_model_ends_the_job_with_one_message(tmp_path, n, command, damage):
    folder = tmp_path / "model"
    write_model(folder, "softmax", n_classes=2, dtype="float64")
    message = damage(folder)
    data = _csv(tmp_path / "d.csv")
    out = tmp_path / "p.csv"
    extra = ["--output", out] if command == "predict" else ["--label-column", "label"]
    r = run_cli(n, command, "--model", folder, "--data", data, *extra, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("error:") == 1, r.stderr
    assert r.stderr.count(message) == 1, r.stderr
    assert "reported by rank" not in r.stderr, r.stderr  # every rank found it
    assert not out.exists()
