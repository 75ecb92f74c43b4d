"""Metrics over rows spread across ranks, and the `evaluate` and `predict` commands.

    $ mpiexec -n 2 python -m mpi_dml evaluate --model runs/digits --data data/digits_test.csv --label-column label
    $ python -m mpi_dml predict --model runs/digits --data data/digits_test.csv --output preds.csv

Each rank reads its own contiguous slice of the file; sums are reduced across ranks, so
the figures are the same for any number of ranks.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from ..data import sharding
from ..data.dataset import check_labels, shown, split_block, unused_note
from ..data.formats import open_table
from ..devices.gpu import array_module
from ..errors import UserError
from ..io.model_files import atomic_writer, load_model
from ..models import labels_for_loss, predictions

EVAL_CHUNK = 8192  # rows per forward pass: bounds memory whatever the shard size


def split_metrics(model, params, x, y, kernels, comm, *, standardize=None) -> dict:
    """Loss and accuracy (classifiers) or mse/r2 (regression) over every rank's rows.

    ``x`` and ``y`` are host arrays; ``params`` and ``kernels`` may be on a GPU, in
    which case each chunk of rows is copied there. The metrics are host floats.
    """
    xp = array_module(params)
    dtype = params.dtype
    loss = correct = 0.0
    for lo in range(0, x.shape[0], EVAL_CHUNK):
        xb = prepare(x[lo:lo + EVAL_CHUNK], dtype, standardize, xp=xp)
        yb = xp.asarray(labels_for_loss(model, y[lo:lo + EVAL_CHUNK], dtype))
        l, c, _ = model.evaluate(params, xb, yb, kernels)
        loss, correct = loss + l, correct + c
    loss, correct, n, sum_y = comm.allreduce_(np.array([loss, correct, y.size, y.sum()]))
    if n == 0:
        return {"n": 0}
    if model.is_classifier:
        return {"accuracy": correct / n, "loss": loss / n, "n": int(n)}
    # Total variance in a second pass around the global mean: the one-pass
    # sum(y^2) - sum(y)^2 / n cancels to nothing for targets far from zero.
    total = comm.allreduce_(np.array([((y - sum_y / n) ** 2).sum()]))[0]
    mse = 2.0 * loss / n  # the squared loss is 0.5 * (z - y)^2
    r2 = 1.0 - (mse * n) / total if total > 0 else None
    return {"r2": r2, "mse": mse, "loss": loss / n, "n": int(n)}


def finite_or_null(record: dict) -> dict:
    """NaN and Infinity are not JSON; write them as null."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in record.items()}


def prepare(x, dtype, standardize, *, xp=np):
    """Features as the model takes them: standardized (in float64), then cast, on the
    host; then moved to ``xp``'s device (no copy for numpy)."""
    if standardize is not None:
        x = (x - standardize[0]) / standardize[1]
    return xp.asarray(np.ascontiguousarray(x, dtype=dtype))


def _read_for_model(loaded, path, comm, label_column, need_labels):
    """This rank's contiguous slice of ``path`` as a Split, the file, and its first row.

    The model's features are taken from the file by name, in the model's order, so a
    file may order its columns differently or carry others (ids, say), which are named
    in a note. With ``need_labels`` the label column must be there; without, it is
    never read (predict accepts files with or without it).
    """
    table = open_table(path, comm)
    features, label_at, unused = comm.agreed(model_columns, table, loaded.feature_names,
                                             label_column, need_labels)
    note = unused_note(path, unused, "the model does not use them")
    if note and comm.is_root:
        print(f"mpi_dml: note: {note}", file=sys.stderr)
    lo, hi = sharding.chunk(table.n_rows, comm.rank, comm.size)
    wanted = features + ([label_at] if need_labels else [])
    classify = need_labels and loaded.model.is_classifier
    split = comm.agreed(split_block, table.read(lo, hi, wanted), table, lo, classify,
                        loaded.feature_names, has_label=need_labels)
    return split, table, lo


def model_columns(table, names, label_column, need_labels) -> tuple[list, int | None, list]:
    """(indices of the model's features in ``table``, label index or None, unused names).

    A plain 2-D .npy names its columns by position, so there "the label column" can
    only be told apart from a feature by the file having one column more than the model.
    """
    columns, path = table.columns, table.path
    if need_labels and label_column not in columns:
        raise UserError(f"{path} has no label column '{label_column}' (the model's); "
                        f"name it with --label-column")
    if table.positional:
        if label_column in columns and len(columns) == len(names) + 1:
            label_at = columns.index(label_column)
            return [i for i in range(len(columns)) if i != label_at], label_at, []
        if need_labels or len(columns) != len(names):
            n = len(columns) - need_labels
            raise UserError(f"{path} has {n} feature columns but the model was trained on "
                            f"{len(names)}")
        return list(range(len(columns))), None, []
    missing = [name for name in names if name not in columns]
    if missing:
        raise UserError(f"{path} has no column named '{missing[0]}', which the model was "
                        f"trained on ({len(missing)} of its {len(names)} features are missing; "
                        f"columns: {shown(columns)})")
    label_at = columns.index(label_column) if label_column in columns else None
    unused = [c for c in columns if c not in names and c != label_column]
    return [columns.index(name) for name in names], label_at, unused


def evaluate_command(args, comm, kernels) -> dict:
    """Metrics of a saved model on labelled data; rank 0 prints them as JSON."""
    loaded = comm.agreed(load_model, args.model)
    label = args.label_column or loaded.info.get("label_column")
    split, table, lo = _read_for_model(loaded, args.data, comm, label, need_labels=True)
    model = loaded.model
    if model.is_classifier:
        n_classes = model.n_outputs if model.loss == "softmax" else 2
        comm.agreed(check_labels, split, n_classes, table, lo, model.kind)
    metrics = split_metrics(model, loaded.params, split.x, split.y, kernels, comm,
                            standardize=loaded.standardize)
    if comm.is_root:
        print(json.dumps(finite_or_null(metrics), allow_nan=False))
    return metrics


def predict_command(args, comm, kernels):
    """One CSV row per input row, in input order, written by rank 0."""
    loaded = comm.agreed(load_model, args.model)
    comm.agreed_on_root(_check_output, args.output)
    split, _, _ = _read_for_model(loaded, args.data, comm, loaded.info.get("label_column"),
                                  need_labels=False)
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
    """Only rank 0 writes, so only rank 0's view of the file system matters."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"Cannot write {path}: it is a folder; give a file name")
    if not target.resolve().parent.is_dir():
        raise UserError(f"Cannot write {path}: folder {target.resolve().parent} does not exist")


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
