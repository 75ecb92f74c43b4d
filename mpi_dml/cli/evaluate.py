"""The ``evaluate`` and ``predict`` commands.

    $ mpiexec -n 2 python -m mpi_dml evaluate --model runs/digits --data data/digits_test.csv --label-column label
    $ python -m mpi_dml predict --model runs/digits --data data/digits_test.csv --output preds.csv

Each rank reads its own contiguous slice of the file; sums are reduced across ranks, so
the figures are the same for any number of ranks. Predictions reach rank 0 one rank at
a time, in input order, and rank 0 writes the file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..data import sharding
from ..data.columns import model_columns, unused_note
from ..data.formats import open_table
from ..data.labels import check_class_range, split_block
from ..data.standardize import scaled
from ..engine.metrics import EVAL_CHUNK, finite_or_null, split_metrics
from ..errors import UserError
from ..io.atomic import atomic_writer
from ..io.model_files import load_model
from ..io.predictions import format_predictions, prediction_header
from ..models import predictions


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


def evaluate_command(args, comm, kernels) -> dict:
    """Metrics of a saved model on labelled data; rank 0 prints them as JSON."""
    loaded = comm.agreed(load_model, args.model)
    label = args.label_column or loaded.info.get("label_column")
    split, table, lo = _read_for_model(loaded, args.data, comm, label, need_labels=True)
    model = loaded.model
    if model.is_classifier:
        n_classes = model.n_outputs if model.loss == "softmax" else 2
        comm.agreed(check_class_range, split, n_classes, table, lo, model.kind)
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
    raw = [model.predict_raw(params, scaled(split.x[i:i + EVAL_CHUNK], params.dtype,
                                             loaded.standardize), kernels)
           for i in range(0, split.x.shape[0], EVAL_CHUNK)]
    raw = np.concatenate(raw) if raw else np.zeros((0, model.n_outputs), dtype=params.dtype)
    labels, probs = predictions(model, raw)
    text = format_predictions(labels, probs, model.is_classifier)
    if not comm.is_root:
        comm.stream_to_root(text, None)
        return
    with atomic_writer(args.output, "w") as fh:
        fh.write(prediction_header(probs))
        comm.stream_to_root(text, fh.write)


def _check_output(path):
    """Only rank 0 writes, so only rank 0's view of the file system matters."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"Cannot write {path}: it is a folder; give a file name")
    if not target.resolve().parent.is_dir():
        raise UserError(f"Cannot write {path}: folder {target.resolve().parent} does not exist")

