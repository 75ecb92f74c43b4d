"""A rank's share of the data: read its rows, split features from labels, check them.

Every rank reads only the rows of the virtual shards it owns (``sharding``); checks
that can fail on one rank's rows run under ``comm.agreed`` so the whole job stops with
one message instead of hanging.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from . import sharding
from .formats import open_table


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


def label_index(columns: list, label_column: str, path: str) -> int:
    if label_column not in columns:
        raise UserError(f"{path} has no column named '{label_column}'. Columns: {shown(columns)}")
    return columns.index(label_column)


def shown(names, limit: int = 12) -> str:
    """Names for a message, cut short when there are many."""
    names = list(names)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def choose_columns(table, label_column: str, features=()) -> tuple[list, int, list]:
    """(feature column indices, label column index, names of unused columns).

    Features are the ``features`` the user named, in that order, or else the table's
    default feature columns without the label. Every other column is unused, and the
    caller says so: an id or weight column must never become a feature unasked.
    """
    columns, path = table.columns, table.path
    label_at = label_index(columns, label_column, path)
    if features:
        for name in features:
            if name not in columns:
                raise UserError(f"{path} has no column named '{name}' (in --features). "
                                f"Columns: {shown(columns)}")
        if label_column in features:
            raise UserError(f"--features names the label column '{label_column}'; a model "
                            f"cannot learn its label from itself")
        chosen = list(features)
    else:
        chosen = [c for c in table.feature_columns if c != label_column]
    if not chosen:
        raise UserError(f"{path} has only the label column '{label_column}' and no features")
    unused = [c for c in columns if c not in chosen and c != label_column]
    return [columns.index(c) for c in chosen], label_at, unused


def unused_note(path, unused, hint: str = "name them in --features to train on them") -> str | None:
    if not unused:
        return None
    word = "column" if len(unused) == 1 else "columns"
    return f"{path}: {word} {shown(unused)} not used as features ({hint})"


def split_block(block, table, first_row, classification, names, has_label=True) -> Split:
    """Split the label (the block's last column) from the features; reject NaN/Inf
    features and bad labels.

    ``names`` are the feature columns' names, for messages. Without ``has_label`` the
    block holds features only (predict); the labels are then zeros.
    """
    if not has_label:
        x, y = np.ascontiguousarray(block), np.zeros(block.shape[0])
    else:
        y = block[:, -1].copy()
        x = np.ascontiguousarray(block[:, :-1])
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserError(f"{table.where(first_row + r)}: feature column '{names[c]}' is {x[r, c]}; "
                        f"features must be finite numbers")
    if not np.isfinite(y).all():
        r = int(np.flatnonzero(~np.isfinite(y))[0])
        raise UserError(f"{table.where(first_row + r)}: label is {y[r]}; labels must be finite")
    if classification:
        frac = (y != np.round(y)) | (y < 0)
        if frac.any():
            r = int(np.flatnonzero(frac)[0])
            raise UserError(f"{table.where(first_row + r)}: class label {y[r]:g} is not an "
                            f"integer >= 0; classes must be numbered 0, 1, 2, ...")
    return Split(x, y)


def check_labels(split: Split, n_classes: int, table, first_row: int, model: str):
    """Labels must fall in [0, n_classes); binary models need exactly classes 0 and 1."""
    if split.y.size == 0:
        return
    out = split.y >= n_classes
    if out.any():
        r = int(np.flatnonzero(out)[0])
        rule = "0 or 1 for a binary model" if model in ("logistic", "svm") else f"in [0, {n_classes})"
        raise UserError(f"{table.where(first_row + r)}: class label {split.y[r]:g} is out of range; "
                        f"labels must be {rule}")


def load_training(cfg, comm) -> TrainingData:
    """Read this rank's training (and validation) rows for ``cfg``; collective."""
    table = open_table(cfg.data, comm)
    comm.agreed(_require_rows, table.n_rows, cfg.data)
    n_shards = min(cfg.shards, table.n_rows)
    bounds = sharding.shard_bounds(table.n_rows, n_shards)
    s0, s1 = sharding.owned_shards(n_shards, comm.rank, comm.size)
    lo, hi = int(bounds[s0]), int(bounds[s1])
    features, label_at, unused = comm.agreed(choose_columns, table, cfg.label_column,
                                             cfg.features)
    names = [table.columns[i] for i in features]
    note = unused_note(cfg.data, unused)
    if note and comm.is_root:
        print(f"mpi_dml: note: {note}", file=sys.stderr)
    rows = comm.agreed(split_block, table.read(lo, hi, features + [label_at]), table, lo,
                       cfg.is_classifier, names)

    n_classes = 0
    if cfg.is_classifier:
        # Classes come from the training file alone; validation labels are checked
        # against them, never allowed to widen the model.
        n_classes = comm.agreed(infer_classes, cfg, comm.allreduce_int(
            int(rows.y.max()) if rows.y.size else 0, op="max"))
        comm.agreed(check_labels, rows, n_classes, table, lo, cfg.model)

    comm.agreed(_check_fraction_possible, cfg, n_shards, table.n_rows)
    held_out = sharding.validation_shards(n_shards, cfg.val_fraction, cfg.seed)
    sizes = np.diff(bounds)
    shard_sizes = np.where(held_out, 0, sizes)
    comm.agreed(_check_split, cfg, int(shard_sizes.sum()), table.n_rows)
    mine = np.arange(s0, s1)
    train, val = rows, None
    if cfg.val_fraction > 0:  # every rank gets a (possibly empty) validation split
        take_train = np.repeat(~held_out[mine], sizes[mine])
        train = Split(rows.x[take_train], rows.y[take_train])
        val = Split(rows.x[~take_train], rows.y[~take_train])
    del rows  # a rank's rows are the largest thing it holds: keep one copy at a time
    n_val = table.n_rows - int(shard_sizes.sum()) if val is not None else 0

    if cfg.val_data:
        val_table = open_table(cfg.val_data, comm)
        comm.agreed(_require_rows, val_table.n_rows, cfg.val_data)
        val_columns = comm.agreed(_same_features, val_table, names, cfg)
        vlo, vhi = sharding.chunk(val_table.n_rows, comm.rank, comm.size)
        val = comm.agreed(split_block, val_table.read(vlo, vhi, val_columns), val_table, vlo,
                          cfg.is_classifier, names)
        if cfg.is_classifier:
            comm.agreed(check_labels, val, n_classes, val_table, vlo, cfg.model)
        n_val = val_table.n_rows
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


def _same_features(val_table, names, cfg) -> list[int]:
    """Columns of the validation file that hold the training features (by name, in
    the training order) and then the label."""
    columns = val_table.columns
    for name in [*names, cfg.label_column]:
        if name not in columns:
            role = "the label column" if name == cfg.label_column else "a feature"
            raise UserError(f"{cfg.val_data} has no column named '{name}', {role} in "
                            f"{cfg.data}; validation data needs the same columns")
    return [columns.index(name) for name in [*names, cfg.label_column]]


def standardization(x: np.ndarray, comm) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every feature over all ranks' rows.

    Two passes (mean, then squared deviations) in float64, so large offsets do not
    cancel. Constant features get a scale of 1 instead of a division by zero, and so
    do near-constant ones (``negligible_spread``).
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
    var = sq / n
    std = np.sqrt(var)
    std[negligible_spread(var, mean, n)] = 1.0
    return mean, std


def negligible_spread(var: np.ndarray, mean: np.ndarray, n: float) -> np.ndarray:
    """Columns whose variance is no bigger than the rounding error of computing it.

    A column of 0.1 that went through arithmetic or a text round trip is 0.1 give or
    take an ulp: its deviation is about 1e-17, and dividing by it turns a new value of
    0.2 into 1e15. Summing n values in float64 is exact only to about n * eps
    relative, so a variance within that of zero (scikit-learn's StandardScaler uses
    the same bound) means the column is constant and is left unscaled.
    """
    eps = np.finfo(np.float64).eps
    return var <= n * eps * var + (n * eps * mean) ** 2
