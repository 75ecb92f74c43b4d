"""A block of rows as features and labels, and the rules labels follow.

Checks that can fail on one rank's rows run under ``comm.agreed`` (the callers), so the
whole job stops with one message naming the file and line.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass
class Split:
    """Features and labels of one rank's rows (labels float64, as read). ``x`` is a
    dense array, or for sparse data (LIBSVM) a SciPy CSR matrix with sorted column
    indices in every row, never made dense."""
    x: np.ndarray
    y: np.ndarray


def read_split(table, lo, hi, features, label_at, *, dtype=np.float64, classification=False,
               names=None) -> Split:
    """Collective: global rows ``lo .. hi-1`` of ``table`` as features (``dtype``) and
    labels (float64), checked.

    The rows are read a bounded block at a time straight into the two arrays, so a
    rank holds its rows once, in the training dtype, plus one block. Without a
    ``label_at`` (predict) the labels are zeros. ``names`` are the features' names,
    for messages. Every failure is agreed: one message on every rank.
    """
    columns = list(features) + ([] if label_at is None else [label_at])
    rows = table.rows(lo, hi, columns)
    names = names if names is not None else [table.columns[c] for c in features]
    return table.comm.agreed(_fill_split, rows, table, np.dtype(dtype), classification, names,
                             label_at is not None)


def _fill_split(rows, table, dtype, classification, names, has_label) -> Split:
    n_features = len(rows.cols) - has_label
    x = np.empty((len(rows), n_features), dtype=dtype)
    y = np.zeros(len(rows))
    for first, block in rows.blocks():
        at = slice(first - rows.lo, first - rows.lo + len(block))
        check_block(block, table, first, classification, names, has_label)
        with np.errstate(over="ignore"):
            x[at] = block[:, :n_features]
        if has_label:
            y[at] = block[:, -1]
        if dtype != np.float64 and not np.isfinite(x[at]).all():
            r, c = np.argwhere(~np.isfinite(x[at]))[0]
            raise UserError(f"{table.where(first + r)}: feature column '{names[c]}' holds "
                            f"{block[r, c]:g}, which is too large for --dtype {dtype.name}; "
                            f"scale it or use --dtype float64")
    return Split(x, y)


def read_sparse_split(table, lo, hi, *, dtype=np.float64, classification=False) -> Split:
    """Collective: global rows ``lo .. hi-1`` of a sparse ``table`` (``table.sparse``)
    as a CSR matrix of ``dtype`` and float64 labels, checked; every failure agreed."""
    rows = table.rows(lo, hi)
    return table.comm.agreed(_fill_sparse_split, rows, table, np.dtype(dtype), classification)


def _fill_sparse_split(rows, table, dtype, classification) -> Split:
    import scipy.sparse as sp

    if hasattr(rows, "csr"):
        # A reader that parses straight into one CSR matrix of ``dtype`` (LIBSVM) has
        # checked every value as it went; the labels' rules are the model's.
        x, y = rows.csr(dtype)
        check_labels(y, table, rows.lo, classification)
        return Split(x, y)
    ys, lengths, indices, values = [], [], [], []
    for first, y, x in rows.blocks():
        check_labels(y, table, first, classification)
        with np.errstate(over="ignore"):
            value = np.array(x.data, dtype=dtype)  # a copy: a block's buffers may be reused
        if not np.isfinite(value).all():
            at = int(np.flatnonzero(~np.isfinite(value))[0])
            r = int(np.searchsorted(x.indptr, at, side="right")) - 1
            rule = ("features must be finite numbers" if not np.isfinite(x.data[at]) else
                    f"it is too large for --dtype {dtype.name}; scale it or use --dtype "
                    f"float64")
            raise UserError(f"{table.where(first + r)}: feature {int(x.indices[at])} holds "
                            f"{x.data[at]:g}; {rule}")
        ys.append(np.array(y, dtype=np.float64))
        lengths.append(np.diff(x.indptr))
        indices.append(np.array(x.indices))
        values.append(value)
    n_features = table.n_features
    nnz = sum(len(i) for i in indices)
    # scipy's own rule for index width: int32 while every index and offset fits.
    itype = np.int32 if max(nnz, n_features) < 2**31 else np.int64
    indptr = np.zeros(len(rows) + 1, dtype=itype)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=indptr[1:])
    x = sp.csr_matrix((_joined(values, dtype), _joined(indices, itype), indptr),
                      shape=(len(rows), n_features), copy=False)
    return Split(x, _joined(ys, np.float64))


def _joined(parts, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def check_labels(y, table, first_row, classification):
    """Labels must be finite; class labels integers >= 0."""
    y = np.asarray(y, dtype=np.float64)
    if not np.isfinite(y).all():
        r = int(np.flatnonzero(~np.isfinite(y))[0])
        raise UserError(f"{table.where(first_row + r)}: label is {y[r]}; labels must be finite")
    if classification:
        frac = (y != np.round(y)) | (y < 0)
        if frac.any():
            r = int(np.flatnonzero(frac)[0])
            raise UserError(f"{table.where(first_row + r)}: class label {y[r]:g} is not an "
                            f"integer >= 0; classes must be numbered 0, 1, 2, ...")


def check_block(block, table, first_row, classification, names, has_label=True):
    """Reject NaN/Inf features and bad labels in a block of rows whose last column is
    the label (when ``has_label``); ``names`` are the feature columns' names."""
    x = block[:, :-1] if has_label else block
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise UserError(f"{table.where(first_row + r)}: feature column '{names[c]}' is "
                            f"{x[r, c]}; features must be finite numbers")
    if has_label:
        check_labels(block[:, -1], table, first_row, classification)


def check_class_range(split: Split, n_classes: int, table, first_row: int, model: str):
    """Labels must fall in [0, n_classes); binary models need exactly classes 0 and 1."""
    if split.y.size == 0:
        return
    out = split.y >= n_classes
    if out.any():
        r = int(np.flatnonzero(out)[0])
        rule = "0 or 1 for a binary model" if model in ("logistic", "svm") else f"in [0, {n_classes})"
        raise UserError(f"{table.where(first_row + r)}: class label {split.y[r]:g} is out of range; "
                        f"labels must be {rule}")


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

