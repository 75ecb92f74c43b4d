"""The trained parameters against an independent NumPy replay of the documented algorithm.

    $ .venv/bin/python -m pytest -q tests/test_training_replay.py
    $ .venv/bin/python -m pytest -q tests/test_training_replay.py -m "not mpi"   # in-process only

The other training tests compare rank counts with each other, which cannot see a bug
that is the same at every rank count (a wrong divisor for the last partial batch, weight
decay applied twice, an off-by-one in warm-up). Here the same batches run through a
plain NumPy loop written from the README ("Commands", "The same model on any number of
ranks"), the schedule formulas in ``optim.learning_rate``'s docstring and the layer
layout and initialisation in ``models.Model.init``: dense layers built from the
reference kernels (``kernels/reference.py``), the gradient summed over the batch and
divided by its true global count, the reference optimizer updates with weights decayed
and biases not. The replay takes only the batch plan from the engine (``sharding``:
``shard_bounds``, ``validation_shards`` and ``EpochPlan`` decide which global rows are
held out and which form batch k); nothing from ``models``, ``optim`` or ``train``.

The engine runs in this process on one rank (``Engine`` with ``Comm.world()``), and
for four cases under real mpiexec at 2 and 3 ranks. In float64 every tensor it writes
must match the replay to 1e-10 relative (``FLOOR`` below for values near 0).
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_cli
from mpi_dml.data import sharding
from mpi_dml.kernels import reference as ref

RTOL = 1e-10
# Relative differences are taken against max(|replay value|, FLOOR): parameters here are
# of order 0.01-1, and a weight that L1 holds near 0 carries rounding noise of order
# 1e-17 that says nothing about the algorithm.
FLOOR = 1e-6

# Every setting the replay reads, given explicitly to the engine too, so no default of
# either side decides a result.
BASE = dict(epochs=3, seed=7, dtype="float64", momentum=0.0, nesterov=False, beta1=0.9,
            beta2=0.999, eps=1e-8, weight_decay=0.0, l1=0.0, schedule="constant",
            warmup_steps=0, step_epochs=10, gamma=0.1, shards=1024, val_fraction=0.0,
            standardize=False, hidden=(), activation="relu", num_classes=0)

# Each model kind, optimizer, schedule, warm-up, weight decay, L1, validation split and
# standardization appears at least twice with different partners. Every case ends its
# epochs on a partial batch (checked in ``replay``).
# "softmax-sgd-l1" is the case that needs L1 to be continuous at 0: from zero weights, many
# weights have a batch gradient that is exactly 0 in exact arithmetic and +-1e-17 in
# floating point, its sign set by the order of the sum (so by the rank count). L1's
# proximal step puts such a weight at exactly 0 whatever that sign; a subgradient
# sign(p) would step it lr*l1 one way or the other, and the result would hang on the
# summation order, not on the algorithm.
CASES = {
    "linear-sgd-constant": ("regression", dict(
        model="linear", optimizer="sgd", lr=0.02, weight_decay=1e-3, batch_size=32)),
    "linear-adamw-cosine": ("regression", dict(
        model="linear", optimizer="adamw", lr=0.05, weight_decay=0.01, l1=1e-3,
        schedule="cosine", warmup_steps=4, val_fraction=0.2, standardize=True,
        batch_size=40, shards=64)),
    "logistic-momentum-step": ("breast_cancer", dict(
        model="logistic", optimizer="sgd", momentum=0.9, lr=0.05, l1=1e-3, schedule="step",
        step_epochs=1, gamma=0.5, warmup_steps=3, standardize=True, batch_size=64,
        shards=64)),
    "logistic-adam-cosine": ("breast_cancer", dict(
        model="logistic", optimizer="adam", lr=0.01, weight_decay=1e-3, schedule="cosine",
        warmup_steps=5, val_fraction=0.2, standardize=True, batch_size=50)),
    "svm-nesterov-constant": ("breast_cancer", dict(
        model="svm", optimizer="sgd", momentum=0.8, nesterov=True, lr=0.01,
        weight_decay=1e-2, warmup_steps=6, standardize=True, batch_size=48)),
    "svm-adamw-step": ("breast_cancer", dict(
        model="svm", optimizer="adamw", lr=0.02, weight_decay=0.05, l1=1e-3,
        schedule="step", step_epochs=1, gamma=0.5, val_fraction=0.25, standardize=True,
        batch_size=60, shards=40)),
    "softmax-nesterov-cosine": ("digits", dict(
        model="softmax", optimizer="sgd", momentum=0.9, nesterov=True, lr=0.001,
        weight_decay=1e-3, schedule="cosine", warmup_steps=10, val_fraction=0.2,
        batch_size=100, shards=128)),
    "softmax-adam-step": ("digits", dict(
        model="softmax", optimizer="adam", lr=0.01, weight_decay=1e-3, schedule="step",
        step_epochs=1, gamma=0.3, standardize=True, batch_size=128)),
    "softmax-sgd-l1": ("digits", dict(
        model="softmax", optimizer="sgd", lr=0.01, l1=1e-4, standardize=True,
        batch_size=100)),
    "mlp-relu-momentum-cosine": ("digits", dict(
        model="mlp", task="classification", hidden=(16, 12), activation="relu",
        optimizer="sgd", momentum=0.9, lr=0.02, weight_decay=1e-3, schedule="cosine",
        warmup_steps=8, val_fraction=0.2, standardize=True, batch_size=96, shards=100)),
    "mlp-relu-adamw-constant": ("digits", dict(
        model="mlp", task="classification", hidden=(16, 12), activation="relu",
        optimizer="adamw", lr=0.005, weight_decay=0.01, l1=1e-4, warmup_steps=5,
        batch_size=100)),
    "mlp-tanh-adam-step": ("regression", dict(
        model="mlp", task="regression", hidden=(10, 6), activation="tanh", optimizer="adam",
        lr=0.01, weight_decay=1e-3, schedule="step", step_epochs=1, gamma=0.5,
        val_fraction=0.2, standardize=True, batch_size=32, shards=50)),
    "mlp-tanh-sgd-cosine": ("regression", dict(
        model="mlp", task="regression", hidden=(10, 6), activation="tanh", optimizer="sgd",
        lr=0.05, l1=1e-3, schedule="cosine", warmup_steps=3, batch_size=45)),
}
# Run under mpiexec as well: uneven shares of shards and of the partial last batch.
MPI_CASES = ("mlp-relu-momentum-cosine", "softmax-nesterov-cosine", "svm-adamw-step",
             "softmax-sgd-l1")


def settings(name: str) -> dict:
    return {**BASE, **CASES[name][1]}


# --- data ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """A small synthetic regression CSV: features of different scales and offsets, a
    linear target with a bend and noise; 310 rows."""
    rng = np.random.default_rng(2024)
    n, d = 310, 6
    x = rng.standard_normal((n, d)) * [1.0, 2.0, 0.5, 1.5, 0.8, 3.0] + [0, 1, -2, 0.5, 0, 4]
    y = x @ [0.5, -0.3, 1.2, 0.0, 0.7, 0.2] + 0.3 * np.sin(x[:, 0]) + 0.1 * rng.standard_normal(n)
    path = tmp_path_factory.mktemp("regression") / "regression.csv"
    header = ",".join([f"f{i}" for i in range(d)] + ["label"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="",
               fmt="%.17g")
    return path


def training_file(request, kind: str):
    """The CSV of ``kind``; only the scikit-learn sets need scikit-learn."""
    found = request.getfixturevalue(kind)
    return found if kind == "regression" else found[0]  # (train, test) for those


def read_csv(path) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a CSV with a ``label`` column, read with the csv module."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    table = np.array([[float(v) for v in row] for row in rows[1:]], dtype=np.float64)
    at = rows[0].index("label")
    return np.delete(table, at, axis=1), table[:, at]


# --- the replay ---------------------------------------------------------------------
def layer_plan(s: dict, n_features: int, labels: np.ndarray):
    """(widths, activations, loss) as README's model list and ``build_model`` describe."""
    classes = s["num_classes"] or max(2, int(labels.max()) + 1)
    if s["model"] == "linear":
        return [n_features, 1], ["identity"], "squared"
    if s["model"] in ("logistic", "svm"):
        return [n_features, 1], ["identity"], "logistic" if s["model"] == "logistic" else "hinge"
    if s["model"] == "softmax":
        return [n_features, classes], ["identity"], "softmax"
    out, loss = (1, "squared") if s["task"] == "regression" else (classes, "softmax")
    hidden = list(s["hidden"])
    return [n_features, *hidden, out], [s["activation"]] * len(hidden) + ["identity"], loss


def initial_parameters(s: dict, widths, activations) -> list[list[np.ndarray]]:
    """[weight (n_in, n_out), bias] per layer: zeros for linear models; for the MLP,
    uniform He (ReLU) or Glorot (tanh and the output layer) bounds, drawn layer by
    layer, input first, from one ``default_rng(seed)``."""
    rng = np.random.default_rng(s["seed"])
    params = []
    for n_in, n_out, act in zip(widths[:-1], widths[1:], activations):
        w = np.zeros((n_in, n_out))
        if s["model"] == "mlp":
            bound = math.sqrt(6.0 / n_in) if act == "relu" else math.sqrt(6.0 / (n_in + n_out))
            w = rng.uniform(-bound, bound, size=(n_in, n_out))
        params.append([w, np.zeros(n_out)])
    return params


def loss_and_gradient(params, activations, loss, x, y):
    """Loss summed over the rows of ``x`` and the summed gradient of every tensor."""
    acts = [x]
    for (w, b), act in zip(params, activations):
        z = acts[-1] @ w
        ref.bias_act_forward(z, b, act)
        acts.append(z)
    delta = acts[-1]  # each loss kernel turns the output into dLoss/dz in place
    bias_grad = np.zeros(delta.shape[1])
    kernel = {"squared": ref.squared_loss_grad, "logistic": ref.logistic_loss_grad,
              "hinge": ref.hinge_loss_grad, "softmax": ref.softmax_xent}[loss]
    result = kernel(delta, y, bias_grad)
    total = result if loss == "squared" else result[0]
    grads = [None] * len(params)
    for i in reversed(range(len(params))):
        grads[i] = [acts[i].T @ delta, bias_grad]
        if i == 0:
            break
        upstream = delta @ params[i][0].T
        bias_grad = np.zeros(upstream.shape[1])
        ref.act_backward(upstream, acts[i], activations[i - 1], bias_grad)
        delta = upstream
    return total, grads


def documented_lr(t: int, s: dict, steps: int, total_steps: int) -> float:
    """Linear warm-up from lr/W to lr over W steps, then constant, step (gamma every
    step_epochs epochs) or cosine from lr towards 0 over the remaining steps."""
    lr, warm = s["lr"], s["warmup_steps"]
    if t < warm:
        return lr * (t + 1) / warm
    if s["schedule"] == "step":
        return lr * s["gamma"] ** ((t // steps) // s["step_epochs"])
    if s["schedule"] == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (t - warm) / (total_steps - warm)))
    return lr


def replay(s: dict, path) -> tuple[dict, list]:
    """The tensors ``train`` should write for settings ``s`` on ``path``, and the
    training loss of every epoch."""
    x_all, y_all = read_csv(path)
    n_rows = x_all.shape[0]
    n_shards = sharding.shard_count(n_rows, s["shards"])
    bounds = sharding.shard_bounds(n_rows, n_shards)
    held_out = sharding.validation_shards(n_shards, s["val_fraction"], s["seed"])
    train_shards = np.flatnonzero(~held_out)
    shard_sizes = np.where(held_out, 0, np.diff(bounds))
    rows = np.concatenate([np.arange(bounds[v], bounds[v + 1]) for v in train_shards])
    x, y = x_all[rows], y_all[rows]
    n_train = rows.size
    assert n_train % s["batch_size"] != 0, "each case must end its epochs on a partial batch"

    tensors = {}
    if s["standardize"]:
        mean = x.sum(axis=0) / n_train
        std = np.sqrt(((x - mean) ** 2).sum(axis=0) / n_train)  # population deviation
        std[std == 0] = 1.0  # a constant feature is centred, not scaled
        x = (x - mean) / std
        tensors = {"standardize.mean": mean, "standardize.std": std}

    widths, activations, loss = layer_plan(s, x.shape[1], y_all)
    if loss == "softmax":
        y = y.astype(np.int64)
    elif loss == "squared":
        y = y.reshape(-1, 1)
    params = initial_parameters(s, widths, activations)
    adam = s["optimizer"] in ("adam", "adamw")
    state = [[(np.zeros_like(p), np.zeros_like(p)) for p in layer] for layer in params]
    masks = [[np.ones_like(w), np.zeros_like(b)] for w, b in params]  # decay weights only

    batch = s["batch_size"]
    steps = -(-n_train // batch)  # the last batch of an epoch is partial
    total_steps = steps * s["epochs"]
    t, losses = 0, []
    for epoch in range(s["epochs"]):
        plan = sharding.EpochPlan(shard_sizes, train_shards, seed=s["seed"], epoch=epoch,
                                  batch_size=batch)
        epoch_loss, seen = 0.0, []
        for k in range(steps):
            idx = plan.local_indices(k)
            count = min(batch, n_train - k * batch)
            assert idx.size == count
            seen.append(idx)
            batch_loss, grads = loss_and_gradient(params, activations, loss, x[idx], y[idx])
            epoch_loss += batch_loss
            lr = documented_lr(t, s, steps, total_steps)
            t += 1
            for layer, layer_grads, layer_state, layer_masks in zip(params, grads, state, masks):
                for p, g, (a, b), mask in zip(layer, layer_grads, layer_state, layer_masks):
                    g = g / count  # summed over the batch, divided by its true count
                    if adam:
                        ref.adam_update(p, g, a, b, lr, s["beta1"], s["beta2"], s["eps"], t,
                                        s["weight_decay"], s["optimizer"] == "adamw", s["l1"],
                                        mask)
                    else:
                        ref.sgd_update(p, g, a, lr, s["momentum"], s["nesterov"],
                                       s["weight_decay"], s["l1"], mask)
        # README: every row once per epoch.
        assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(n_train))
        losses.append(epoch_loss / n_train)
    for i, (w, b) in enumerate(params):
        tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"] = w, b
    return tensors, losses


# --- the engine and the comparison --------------------------------------------------
def train_in_process(s: dict, data, out) -> None:
    from mpi_dml.parallel.comm import Comm
    from mpi_dml.config import TrainConfig
    from mpi_dml.engine import Engine

    cfg = TrainConfig(data=str(data), label_column="label", out=str(out), device="cpu",
                      threads=1, progress="none", **s)
    Engine(cfg, comm=Comm.world()).fit()


def cli_flags(s: dict) -> list:
    flags = []
    for key, value in s.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif key == "hidden":
            if value:
                flags += [flag, ",".join(map(str, value))]
        else:
            flags += [flag, str(value)]
    return flags


def written(out) -> tuple[dict, list]:
    tensors = load_file(str(out / "model.safetensors"))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return tensors, [json.loads(line)["train_loss"] for line in lines]


def max_relative_difference(got: dict, want: dict) -> float:
    assert sorted(got) == sorted(want)
    worst = 0.0
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        assert got[name].dtype == np.float64, name
        scale = np.maximum(np.abs(expected), FLOOR)
        worst = max(worst, float(np.max(np.abs(got[name] - expected) / scale)))
    return worst


def check_against_replay(s: dict, data, out) -> float:
    """Compare what the engine wrote into ``out`` with the replay; the worst difference."""
    want, want_losses = replay(s, data)
    got, got_losses = written(out)
    worst = max_relative_difference(got, want)
    assert worst <= RTOL, f"parameters differ from the replay by {worst:.3g} (relative)"
    np.testing.assert_allclose(got_losses, want_losses, rtol=RTOL)
    return worst


@pytest.mark.parametrize("name", list(CASES))
def test_engine_matches_replay(name, request, tmp_path):
    s = settings(name)
    data = training_file(request, CASES[name][0])
    train_in_process(s, data, tmp_path / "out")
    check_against_replay(s, data, tmp_path / "out")


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("name", MPI_CASES)
def test_engine_matches_replay_under_mpiexec(name, ranks, request, tmp_path):
    s = settings(name)
    data = training_file(request, CASES[name][0])
    out = tmp_path / "out"
    result = run_cli(ranks, "train", "--data", data, "--label-column", "label", "--out", out,
                     "--device", "cpu", "--progress", "none", *cli_flags(s))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "model.json").read_text())["world_size"] == ranks
    check_against_replay(s, data, out)

