"""Metrics over rows spread across ranks, and the `evaluate` and `predict` commands.

    $ mpiexec -n 2 python -m mpi_dml evaluate --model runs/digits --data data/digits_test.csv --label-column label
    $ python -m mpi_dml predict --model runs/digits --data data/digits_test.csv --output preds.csv

Each rank reads its own contiguous slice of the file; sums are reduced across ranks, so
the figures are the same for any number of ranks.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from . import sharding
from .dataset import check_labels, label_index, split_block, where
from .errors import UserError
from .model_io import atomic_writer, load_model
from .models import labels_for_loss, predictions
from .sources import open_table

EVAL_CHUNK = 8192  # rows per forward pass: bounds memory whatever the shard size


def split_metrics(model, params, x, y, kernels, comm, *, standardize=None) -> dict:
    """Loss and accuracy (classifiers) or mse/r2 (regression) over every rank's rows."""
    dtype = params.dtype
    loss = correct = 0.0
    for lo in range(0, x.shape[0], EVAL_CHUNK):
        xb = prepare(x[lo:lo + EVAL_CHUNK], dtype, standardize)
        yb = labels_for_loss(model, y[lo:lo + EVAL_CHUNK], dtype)
        l, c, _ = model.evaluate(params, xb, yb, kernels)
        loss, correct = loss + l, correct + c
    sums = np.array([loss, correct, y.size, y.sum(), (y.astype(np.float64) ** 2).sum()])
    comm.allreduce_(sums)
    loss, correct, n, sy, syy = sums
    n_int = int(n)
    if n_int == 0:
        return {"n": 0}
    if model.is_classifier:
        return {"accuracy": correct / n, "loss": loss / n, "n": n_int}
    mse = 2.0 * loss / n  # the squared loss is 0.5 * (z - y)^2
    total = syy - sy * sy / n
    r2 = 1.0 - (mse * n) / total if total > 0 else float("nan")
    return {"r2": r2, "mse": mse, "loss": loss / n, "n": n_int}


def prepare(x, dtype, standardize):
    """Features as the model takes them: standardized (in float64), then cast."""
    if standardize is not None:
        x = (x - standardize[0]) / standardize[1]
    return np.ascontiguousarray(x, dtype=dtype)


def _read_for_model(loaded, path, label_column, comm):
    """This rank's slice of ``path``: (features, labels or None, first row)."""
    table = open_table(path, comm)
    lo, hi = sharding.chunk(table.n_rows, comm.rank, comm.size)
    names = loaded.feature_names
    label_at = None
    if label_column:
        label_at = comm.agreed(label_index, table.columns, label_column, path)
    features = [c for i, c in enumerate(table.columns) if i != label_at]
    comm.agreed(_check_features, features, names, path)
    block = table.read(lo, hi)
    if label_at is None:
        # No labels: append a dummy column so the same checks (finite, numeric) apply.
        block = np.concatenate([block, np.zeros((block.shape[0], 1))], axis=1)
        label_at = block.shape[1] - 1
    split = comm.agreed(split_block, block, label_at, path, lo, loaded.model.is_classifier and
                        label_column is not None)
    return split, lo, table.n_rows


def _check_features(features, names, path):
    if len(features) != len(names):
        raise UserError(f"{path} has {len(features)} feature columns but the model was trained "
                        f"on {len(names)}")
    if features != names and not all(f.isdigit() for f in features):
        diff = next(i for i, (a, b) in enumerate(zip(features, names)) if a != b)
        raise UserError(f"{path} feature column {diff} is '{features[diff]}' but the model "
                        f"expects '{names[diff]}'")


def evaluate_command(args, comm, kernels) -> dict:
    """Metrics of a saved model on labelled data; rank 0 prints them as JSON."""
    loaded = comm.agreed(load_model, args.model)
    label = args.label_column or loaded.info.get("label_column")
    split, lo, _ = _read_for_model(loaded, args.data, label, comm)
    if loaded.model.is_classifier:
        comm.agreed(check_labels, split, loaded.model.n_outputs if loaded.model.loss == "softmax"
                    else 2, args.data, lo, loaded.model.kind)
    metrics = split_metrics(loaded.model, loaded.params, split.x, split.y, kernels, comm,
                            standardize=loaded.standardize)
    if comm.is_root:
        print(json.dumps(metrics))
    return metrics


def predict_command(args, comm, kernels):
    """One CSV row per input row, in input order, written by rank 0."""
    loaded = comm.agreed(load_model, args.model)
    comm.agreed(_check_output, args.output)
    label = loaded.info.get("label_column")
    table_columns = open_table(args.data, comm).columns
    split, _, _ = _read_for_model(loaded, args.data, label if label in table_columns else None, comm)
    model, params = loaded.model, loaded.params
    raw = [model.predict_raw(params, prepare(split.x[i:i + EVAL_CHUNK], params.dtype,
                                             loaded.standardize), kernels)
           for i in range(0, split.x.shape[0], EVAL_CHUNK)]
    raw = np.concatenate(raw) if raw else np.zeros((0, model.n_outputs), dtype=params.dtype)
    labels, probs = predictions(model, raw)
    text = _format_rows(labels, probs, model.is_classifier)
    if not comm.is_root:
        comm.stream_to_root(text, None)
        return
    with atomic_writer(args.output, "w") as fh:
        fh.write(_header(probs))
        comm.stream_to_root(text, fh.write)


def _check_output(path):
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise UserError(f"Cannot write {path}: folder {folder} does not exist")


def _header(probs) -> str:
    cols = ["prediction"]
    if probs is not None:
        cols += [f"prob_{c}" for c in range(probs.shape[1])]
    return ",".join(cols) + "\n"


def _format_rows(labels, probs, classifier) -> str:
    buf = io.StringIO()
    if probs is None:
        np.savetxt(buf, labels[:, None], fmt="%d" if classifier else "%.10g", delimiter=",")
    else:
        fmt = ["%d"] + ["%.6g"] * probs.shape[1]
        np.savetxt(buf, np.column_stack([labels, probs]), fmt=fmt, delimiter=",")
    return buf.getvalue()
