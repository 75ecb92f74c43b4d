"""The ``evaluate`` and ``predict`` commands.

    $ mpiexec -n 2 python -m mpi_dml evaluate --model runs/digits --data data/digits_test.csv --label-column label
    $ python -m mpi_dml predict --model runs/digits --data data/digits_test.csv --output preds.csv

Each rank reads its own contiguous slice of the file, a bounded block at a time; sums
are reduced across ranks, so the figures are the same for any number of ranks. For
predict, each rank formats its own rows and writes them at its offset of the one
output file, in input order.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..data import sharding
from ..data.columns import model_columns, unused_note
from ..data.formats import open_table
from ..data.labels import Split, check_block, check_class_range, check_labels
from ..data.standardize import scaled
from ..engine.metrics import EVAL_CHUNK, finite_or_null, local_sums, reduced_metrics
from ..errors import UserError
from ..io.model_files import load_model
from ..io.predictions import format_predictions, prediction_header, write_in_rank_order
from ..models import predictions


def _rows_for_model(loaded, path, comm, label_column, need_labels, fmt=None,
                    zero_based=None):
    """This rank's contiguous slice of ``path``, ready to read, and the file.

    The model's features are taken from the file by name, in the model's order, so a
    file may order its columns differently or carry others (ids, say), which are named
    in a note. With ``need_labels`` the label column must be there; without, it is
    never read (predict accepts files with or without it).
    """
    model = loaded.model
    table = open_table(path, comm, fmt, zero_based=_zero_based(loaded, zero_based),
                       n_features=model.n_features, features_from="the model")
    lo, hi = sharding.chunk(table.n_rows, comm.rank, comm.size)
    if getattr(table, "sparse", False):
        # Numbered features: the model's first n_features; the reader refused any
        # line with an index beyond them, naming it.
        return table.rows(lo, hi), table
    if loaded.feature_names is None:
        comm.agreed(_sparse_model_needs_sparse_rows, path)
    features, label_at, unused = comm.agreed(model_columns, table, loaded.feature_names,
                                             label_column, need_labels)
    note = unused_note(path, unused, "the model does not use them")
    if note and comm.is_root:
        print(f"mpi_dml: note: {note}", file=sys.stderr)
    return table.rows(lo, hi, features + ([label_at] if need_labels else [])), table


def _zero_based(loaded, flag) -> bool:
    """LIBSVM indices start at 0 when the flag says so, else as in training."""
    if flag is not None:
        return bool(flag)
    return bool((loaded.info.get("config") or {}).get("zero_based", False))


def _sparse_model_needs_sparse_rows(path):
    raise UserError(f"{path} has named columns, and the model was trained on sparse "
                    f"(LIBSVM) rows, whose features are numbered; give it LIBSVM data")


def _sparse_chunks(rows, table, loaded, need_labels):
    """``(CSR features, labels or None)`` of at most EVAL_CHUNK rows each; local."""
    model = loaded.model
    classify = need_labels and model.is_classifier
    n_classes = model.n_outputs if model.loss == "softmax" else 2
    for first, y, x in rows.blocks():
        if need_labels:
            check_labels(y, table, first, classify)
        for a in range(0, x.shape[0], EVAL_CHUNK):
            part, labels = x[a:a + EVAL_CHUNK], np.array(y[a:a + EVAL_CHUNK], np.float64)
            if classify:
                check_class_range(Split(part, labels), n_classes, table, first + a,
                                  model.kind)
            yield part, labels if need_labels else None


def _checked_chunks(rows, table, loaded, need_labels):
    """``(features, labels or None)`` of at most EVAL_CHUNK rows each, checked; local."""
    if getattr(table, "sparse", False):
        yield from _sparse_chunks(rows, table, loaded, need_labels)
        return
    model, names = loaded.model, loaded.feature_names
    width = len(names)
    classify = need_labels and model.is_classifier
    n_classes = model.n_outputs if model.loss == "softmax" else 2
    for first, block in rows.blocks(max_cells=EVAL_CHUNK * max(len(rows.cols), 1)):
        check_block(block, table, first, classify, names, has_label=need_labels)
        for a in range(0, len(block), EVAL_CHUNK):
            part = block[a:a + EVAL_CHUNK]
            y = part[:, width].astype(np.float64) if need_labels else None
            if classify:
                check_class_range(Split(part[:, :width], y), n_classes, table, first + a,
                                  model.kind)
            yield part[:, :width], y


def evaluate_command(args, comm, kernels) -> dict:
    """Metrics of a saved model on labelled data; rank 0 prints them as JSON."""
    loaded = comm.agreed(load_model, args.model)
    label = args.label_column or loaded.info.get("label_column")
    rows, table = _rows_for_model(loaded, args.data, comm, label, need_labels=True,
                                  fmt=args.format, zero_based=args.zero_based)
    loss, correct, y = comm.agreed(_evaluate_rows, loaded, rows, table, kernels)
    metrics = reduced_metrics(loaded.model, loss, correct, y, comm)
    if comm.is_root:
        print(json.dumps(finite_or_null(metrics), allow_nan=False))
    return metrics


def _evaluate_rows(loaded, rows, table, kernels):
    """This rank's loss and correct sums, and its labels (kept for r2's second pass)."""
    labels = []

    def chunks():
        for x, y in _checked_chunks(rows, table, loaded, need_labels=True):
            labels.append(y)
            yield x, y

    loss, correct = local_sums(loaded.model, loaded.params, chunks(), kernels,
                               standardize=loaded.standardize)
    return loss, correct, np.concatenate(labels) if labels else np.zeros(0)


def predict_command(args, comm, kernels):
    """One CSV row per input row, in input order; every rank writes its own rows."""
    loaded = comm.agreed(load_model, args.model)
    comm.agreed_on_root(_check_output, args.output)
    rows, table = _rows_for_model(loaded, args.data, comm, loaded.info.get("label_column"),
                                  need_labels=False, fmt=args.format,
                                  zero_based=args.zero_based)
    text = comm.agreed(_prediction_text, loaded, rows, table, kernels)
    _, probs = predictions(loaded.model, np.zeros((0, loaded.model.n_outputs),
                                                  dtype=loaded.params.dtype))
    write_in_rank_order(args.output, prediction_header(probs).encode(), text, comm)


def _prediction_text(loaded, rows, table, kernels) -> bytes:
    model, params = loaded.model, loaded.params
    parts = []
    for x, _ in _checked_chunks(rows, table, loaded, need_labels=False):
        raw = model.predict_raw(params, scaled(x, params.dtype, loaded.standardize), kernels)
        labels, probs = predictions(model, raw)
        parts.append(format_predictions(labels, probs, model.is_classifier).encode())
    return b"".join(parts)


def _check_output(path):
    """Checked where the file is created, on rank 0; a rank that cannot see the file
    there says so when it comes to write its rows."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"Cannot write {path}: it is a folder; give a file name")
    if not target.resolve().parent.is_dir():
        raise UserError(f"Cannot write {path}: folder {target.resolve().parent} does not exist")

