"""A rank's share of the data: read its rows, split features from labels, check them.

Every rank reads only the rows of the virtual shards it owns (``sharding``); checks
that can fail on one rank's rows run under ``comm.agreed`` so the whole job stops with
one message instead of hanging.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import sharding
from .errors import UserError
from .sources import open_table


@dataclass
class Split:
    """Features and labels of one rank's rows (float64; labels as read)."""
    x: np.ndarray
    y: np.ndarray


@dataclass
class TrainingData:
    train: Split
    val: Split | None           # this rank's validation rows, if any validation is asked for
    feature_names: list
    n_classes: int              # 0 for regression
    shard_sizes: np.ndarray     # training rows per virtual shard, for every shard
    local_shards: np.ndarray    # training shards whose rows make up ``train``, ascending
    n_train: int
    n_val: int


def where(path: str, row: int) -> str:
    """Human position of a global data row: file line for CSV, row index otherwise."""
    if str(path).endswith((".npy", ".npz")):
        return f"{path} row {row}"
    return f"{path} line {row + 2}"


def label_index(columns: list, label_column: str, path: str) -> int:
    if label_column not in columns:
        shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
        raise UserError(f"{path} has no column named '{label_column}'. Columns: {shown}")
    if len(columns) < 2:
        raise UserError(f"{path} has only the label column '{label_column}' and no features")
    return columns.index(label_column)


def split_block(block, label_at, path, first_row, classification, names) -> Split:
    """Separate the label column and reject NaN/Inf features and bad labels.

    ``names`` are the feature columns' names, for messages. ``label_at`` None means the
    block holds features only (predict); the labels are then zeros.
    """
    if label_at is None:
        x, y = np.ascontiguousarray(block), np.zeros(block.shape[0])
    else:
        y = block[:, label_at].copy()
        x = np.delete(block, label_at, axis=1)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserError(f"{where(path, first_row + r)}: feature column '{names[c]}' is {x[r, c]}; "
                        f"features must be finite numbers")
    if not np.isfinite(y).all():
        r = int(np.flatnonzero(~np.isfinite(y))[0])
        raise UserError(f"{where(path, first_row + r)}: label is {y[r]}; labels must be finite")
    if classification:
        frac = (y != np.round(y)) | (y < 0)
        if frac.any():
            r = int(np.flatnonzero(frac)[0])
            raise UserError(f"{where(path, first_row + r)}: class label {y[r]:g} is not an integer "
                            f">= 0; classes must be numbered 0, 1, 2, ...")
    return Split(x, y)


def check_labels(split: Split, n_classes: int, path: str, first_row: int, model: str):
    """Labels must fall in [0, n_classes); binary models need exactly classes 0 and 1."""
    if split.y.size == 0:
        return
    out = split.y >= n_classes
    if out.any():
        r = int(np.flatnonzero(out)[0])
        rule = "0 or 1 for a binary model" if model in ("logistic", "svm") else f"in [0, {n_classes})"
        raise UserError(f"{where(path, first_row + r)}: class label {split.y[r]:g} is out of range; "
                        f"labels must be {rule}")


def load_training(cfg, comm) -> TrainingData:
    """Read this rank's training (and validation) rows for ``cfg``; collective."""
    table = open_table(cfg.data, comm)
    comm.agreed(_require_rows, table.n_rows, cfg.data)
    n_shards = min(cfg.shards, table.n_rows)
    bounds = sharding.shard_bounds(table.n_rows, n_shards)
    s0, s1 = sharding.owned_shards(n_shards, comm.rank, comm.size)
    lo, hi = int(bounds[s0]), int(bounds[s1])
    label_at = comm.agreed(label_index, table.columns, cfg.label_column, cfg.data)
    names = [c for i, c in enumerate(table.columns) if i != label_at]
    block = table.read(lo, hi)
    rows = comm.agreed(split_block, block, label_at, cfg.data, lo, cfg.is_classifier, names)
    del block  # a rank's rows are the largest thing it holds: keep one copy at a time

    comm.agreed(_check_fraction_possible, cfg, n_shards, table.n_rows)
    held_out = sharding.validation_shards(n_shards, cfg.val_fraction, cfg.seed)
    sizes = np.diff(bounds)
    shard_sizes = np.where(held_out, 0, sizes)
    comm.agreed(_check_split, cfg, int(shard_sizes.sum()), table.n_rows)
    mine = np.arange(s0, s1)
    take_train = np.repeat(~held_out[mine], sizes[mine])
    train, val = rows, None
    if cfg.val_fraction > 0:  # every rank gets a (possibly empty) validation split
        train = Split(rows.x[take_train], rows.y[take_train])
        val = Split(rows.x[~take_train], rows.y[~take_train])
    n_val = table.n_rows - int(shard_sizes.sum()) if val is not None else 0

    if cfg.val_data:
        val_table = open_table(cfg.val_data, comm)
        comm.agreed(_require_rows, val_table.n_rows, cfg.val_data)
        comm.agreed(_same_features, val_table.columns, table.columns, cfg)
        vlo, vhi = sharding.chunk(val_table.n_rows, comm.rank, comm.size)
        val_at = val_table.columns.index(cfg.label_column)
        val = comm.agreed(split_block, val_table.read(vlo, vhi), val_at, cfg.val_data, vlo,
                          cfg.is_classifier, names)
        n_val = val_table.n_rows

    n_classes = 0
    if cfg.is_classifier:
        # Classes come from the training file alone; validation labels are checked
        # against them, never allowed to widen the model.
        n_classes = comm.agreed(infer_classes, cfg, comm.allreduce_int(
            int(rows.y.max()) if rows.y.size else 0, op="max"))
        comm.agreed(check_labels, rows, n_classes, cfg.data, lo, cfg.model)
        if cfg.val_data:
            comm.agreed(check_labels, val, n_classes, cfg.val_data, vlo, cfg.model)
    return TrainingData(train, val, names, n_classes, shard_sizes,
                        mine[~held_out[mine]], int(shard_sizes.sum()), n_val)


MAX_INFERRED_CLASSES = 10_000


def infer_classes(cfg, largest_label: int) -> int:
    """``num_classes`` if set; binary models have 2; otherwise 1 + the largest label.

    A huge largest label is far more often a regression target or an id column than a
    real class count, so beyond MAX_INFERRED_CLASSES the user must say so.
    """
    if cfg.model in ("logistic", "svm"):
        return 2
    if cfg.num_classes:
        return cfg.num_classes
    if largest_label + 1 > MAX_INFERRED_CLASSES:
        raise UserError(f"the largest label in '{cfg.label_column}' is {largest_label}, which would "
                        f"make {largest_label + 1} classes; pass --num-classes if that is "
                        f"intended, or --task regression for a numeric target")
    return max(2, largest_label + 1)


def _require_rows(n_rows, path):
    if n_rows == 0:
        raise UserError(f"{path} has a header but no data rows")


def _check_fraction_possible(cfg, n_shards, n_rows):
    if cfg.val_fraction > 0 and n_shards < 2:
        raise UserError(f"--val-fraction holds out whole virtual shards, and {cfg.data} "
                        f"({n_rows} rows, --shards {cfg.shards}) has only {n_shards}; "
                        f"raise --shards or use --val-data")


def _check_split(cfg, n_train, n_rows):
    """Holding out whole shards must come close to the asked fraction and leave rows."""
    if n_train == 0:
        raise UserError(f"{cfg.data} leaves no training rows")
    if cfg.val_fraction > 0:
        got = 1 - n_train / n_rows
        if abs(got - cfg.val_fraction) > cfg.val_fraction / 2:
            raise UserError(f"--val-fraction {cfg.val_fraction} holds out whole shards, which "
                            f"with --shards {cfg.shards} gives {got:.2f} of the rows; raise "
                            f"--shards or use --val-data")


def _same_features(val_columns, columns, cfg):
    if cfg.label_column not in val_columns:
        raise UserError(f"{cfg.val_data} has no column named '{cfg.label_column}'")
    if list(val_columns) != list(columns):
        raise UserError(f"{cfg.val_data} has {len(val_columns)} columns that differ from the "
                        f"{len(columns)} of {cfg.data}; validation data needs the same columns "
                        f"in the same order")


def standardization(x: np.ndarray, comm) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every feature over all ranks' rows.

    Two passes (mean, then squared deviations) in float64, so large offsets do not
    cancel. Constant features get a scale of 1 instead of a division by zero.
    """
    d = x.shape[1]
    acc = np.zeros(d + 1)
    acc[:d] = x.sum(axis=0)
    acc[d] = x.shape[0]
    comm.allreduce_(acc)
    n = max(acc[d], 1.0)
    mean = acc[:d] / n
    sq = ((x - mean) ** 2).sum(axis=0)
    comm.allreduce_(sq)
    std = np.sqrt(sq / n)
    std[std == 0] = 1.0
    return mean, std
