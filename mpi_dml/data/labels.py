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
    """Features and labels of one rank's rows (float64; labels as read)."""
    x: np.ndarray
    y: np.ndarray


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

