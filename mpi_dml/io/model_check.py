"""Checks of a model folder read back from disk, every field before it is used.

``model.json`` and ``model.safetensors`` are input like any other: a folder may be
edited by hand, copied half-way, or written by another release. ``evaluate`` and
``predict`` load it under ``Comm.agreed``, so a check that fails here ends the job on
every rank with one message (exit status 2) instead of a traceback later on. Each
message names the file, the field, the rule and the value:

    runs/a/model.json: 'loss' must be hinge or squared_hinge for kind svm. Got 'softmax' instead.

Every folder that ``train`` writes passes these checks.
"""
from __future__ import annotations

import re

import numpy as np

from ..config import DTYPES
from ..errors import UserError
from ..models import (HIDDEN_ACTIVATIONS, LOSS_CHOICES, LOSSES, MODELS, TASKS, Layer, Model,
                      build_model)

FORMAT = "mpi_dml.model"
FORMAT_VERSION = 1
# The output layer's activation, as build_model makes it; hidden layers take the
# config's choices. Both are among the kernels' ACTIVATIONS, so any layer that passes
# here can be run.
OUTPUT_ACTIVATION = "identity"

# The losses build_model gives each kind over all tasks and loss choices, so this table
# cannot drift from what train writes: linear squared, logistic logistic, svm hinge or
# squared_hinge, softmax softmax, mlp softmax or squared.
KIND_LOSSES = {kind: tuple(dict.fromkeys(
                   [build_model(kind, task, 1, 2, (1,)).loss for task in TASKS]
                   + list(LOSS_CHOICES.get(kind, ()))))
               for kind in MODELS}

MISSING = object()  # a key absent from model.json, told apart from a null value
SHA256 = re.compile(r"[0-9a-f]{64}")
SAME_RUN = "both files must come from the same run of train"


def refuse(path, what: str, rule: str, value=MISSING, got: str | None = None):
    """Raise the one uniform message; ``got`` replaces the shown value when given."""
    if got is None:
        got = "nothing (the key is missing)" if value is MISSING else _shown(value)
    raise UserError(f"{path}: {what} must {rule}. Got {got} instead.")


def _shown(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(value) -> bool:
    return type(value) is int  # bool is an int subclass, and 3.0 is no size


def _one_of(choices) -> str:
    return "be one of " + ", ".join(choices)


def check_description(info, path) -> Model:
    """The Model that ``info`` (parsed model.json at ``path``) describes, or UserError.

    Checks, in this order: format, format_version, kind, loss, layers, dtype,
    feature_names, label_column, classes, standardize, tensors_sha256.
    """
    if not isinstance(info, dict):
        raise UserError(f"{path} must hold a JSON object (the description train writes). "
                        f"Got a {type(info).__name__} instead.")
    get = info.get
    if get("format", MISSING) != FORMAT:
        refuse(path, "'format'", f"be '{FORMAT}' (a model folder written by mpi_dml train)",
               get("format", MISSING))
    version = get("format_version", MISSING)
    if not (_is_int(version) and version == FORMAT_VERSION):
        refuse(path, "'format_version'", f"be {FORMAT_VERSION}, the version this mpi_dml "
               f"reads", version)
    kind = get("kind", MISSING)
    if kind == "custom":
        raise UserError(f"{path} describes a model of your own ({get('class', 'a custom model')}), "
                        f"trained with mpi_dml.train: evaluate and predict know only the "
                        f"built-in models; read its parameters from model.safetensors")
    if not (isinstance(kind, str) and kind in MODELS):
        refuse(path, "'kind'", _one_of(MODELS), kind)
    loss = get("loss", MISSING)
    if not (isinstance(loss, str) and loss in LOSSES):
        refuse(path, "'loss'", _one_of(LOSSES), loss)
    if loss not in KIND_LOSSES[kind]:
        refuse(path, "'loss'", f"be {' or '.join(KIND_LOSSES[kind])} for kind {kind}", loss)
    model = Model(kind, check_layers(get("layers", MISSING), kind, loss, path), loss)

    dtype = get("dtype", MISSING)
    if not (isinstance(dtype, str) and dtype in DTYPES):
        refuse(path, "'dtype'", _one_of(DTYPES), dtype)
    names = get("feature_names", MISSING)
    # null: trained on sparse (LIBSVM) rows, whose features are numbered, not named.
    if names is not None and not (isinstance(names, list) and len(names) == model.n_features
                                  and all(isinstance(n, str) and n for n in names)):
        refuse(path, "'feature_names'", f"be null or a list of {model.n_features} non-empty "
               f"strings (one per input of layer 0)", names)
    if not isinstance(get("label_column", MISSING), str):
        refuse(path, "'label_column'", "be a string", get("label_column", MISSING))
    check_classes(get("classes", MISSING), model, path)
    if not isinstance(get("standardize", MISSING), bool):
        refuse(path, "'standardize'", "be true or false", get("standardize", MISSING))
    digest = get("tensors_sha256", MISSING)
    if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
        refuse(path, "'tensors_sha256'", "be 64 lowercase hexadecimal digits (the SHA-256 of "
               "model.safetensors)", digest)
    return model


def check_layers(raw, kind: str, loss: str, path) -> list[Layer]:
    """Layers as build_model makes them: [n_in, n_out, activation] entries whose sizes
    are positive integers and chain, hidden layers relu or tanh, the output identity
    and as wide as ``loss`` needs; one layer unless ``kind`` is mlp."""
    if not (isinstance(raw, list) and raw):
        refuse(path, "'layers'", "be a non-empty list of [n_in, n_out, activation]", raw)
    if kind != "mlp" and len(raw) != 1:
        refuse(path, "'layers'", f"hold exactly one layer for kind {kind}",
               got=f"{len(raw)} layers")
    layers = []
    for i, entry in enumerate(raw):
        where = f"'layers' entry {i}"
        if not (isinstance(entry, list) and len(entry) == 3):
            refuse(path, where, "be a list [n_in, n_out, activation]", entry)
        n_in, n_out, activation = entry
        for name, size in (("n_in", n_in), ("n_out", n_out)):
            if not (_is_int(size) and size >= 1):
                refuse(path, f"{where} {name}", "be a positive integer", size)
        if layers and n_in != layers[-1].n_out:
            refuse(path, f"{where} n_in", f"equal entry {i - 1}'s n_out ({layers[-1].n_out})",
                   n_in)
        if i == len(raw) - 1:
            if activation != OUTPUT_ACTIVATION:
                refuse(path, f"{where} activation", f"be {OUTPUT_ACTIVATION} (the output "
                       f"layer's)", activation)
        elif not (isinstance(activation, str) and activation in HIDDEN_ACTIVATIONS):
            refuse(path, f"{where} activation", _one_of(HIDDEN_ACTIVATIONS) + " (a hidden "
                   "layer's)", activation)
        layers.append(Layer(n_in, n_out, activation))
    n_out, last = layers[-1].n_out, f"'layers' entry {len(layers) - 1} n_out"
    if loss == "softmax" and n_out < 2:
        refuse(path, last, "be >= 2 for loss softmax (one output per class)", n_out)
    if loss != "softmax" and n_out != 1:
        refuse(path, last, f"be 1 for loss {loss}", n_out)
    return layers


def check_classes(classes, model: Model, path):
    """Null, or one entry per class: the outputs for softmax, two for binary losses."""
    if model.loss == "squared":
        if classes is not None:
            refuse(path, "'classes'", "be null for loss squared (a regression model)", classes)
        return
    n = model.n_outputs if model.loss == "softmax" else 2
    if not (classes is None or (isinstance(classes, list) and len(classes) == n)):
        refuse(path, "'classes'", f"be null or a list of {n} (the model's classes)", classes)


def expected_tensors(model: Model, dtype: np.dtype, standardize: bool) -> dict:
    """name -> (dtype, shape) of exactly the tensors the description needs."""
    want = {name: (dtype, tuple(shape)) for name, shape, _, _ in model.params}
    if standardize:
        for name in ("standardize.mean", "standardize.std"):
            want[name] = (np.dtype(np.float64), (model.n_features,))
    return want


def check_tensors(tensors: dict, model: Model, dtype: np.dtype, standardize: bool, path):
    """The tensor file holds exactly the expected tensors, with the declared dtype and
    shape (nothing is cast), finite values, and a positive standard deviation."""
    want = expected_tensors(model, dtype, standardize)
    for name, (dt, shape) in want.items():
        if name not in tensors:
            raise UserError(f"{path}: lacks tensor '{name}' ({dt} of shape {shape}) that "
                            f"model.json describes; {SAME_RUN}")
    for name in sorted(tensors):
        if name not in want:
            raise UserError(f"{path}: holds tensor '{name}', which model.json does not "
                            f"describe; {SAME_RUN}")
    for name, (dt, shape) in want.items():
        t = tensors[name]
        if t.dtype != dt or t.shape != shape:
            refuse(path, f"tensor '{name}'", f"be {dt} of shape {shape} as model.json says",
                   got=f"{t.dtype} of shape {t.shape}")
        _check_values(t, name, np.isfinite, "hold finite values", path)
    if standardize:
        _check_values(tensors["standardize.std"], "standardize.std", lambda s: s > 0,
                      "hold positive values (a feature's standard deviation)", path)


def _check_values(t, name, ok, rule, path):
    bad = ~ok(t)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        refuse(path, f"tensor '{name}'", rule,
               got=f"{t[at]} at index {at[0] if len(at) == 1 else at}")
