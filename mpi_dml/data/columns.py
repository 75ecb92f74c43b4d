"""Which columns of a table are the features and which is the label.

Features are named, never guessed: the columns ``--features`` names, or else the
table's default feature columns without the label (every column, except in ``.npz``
files, where only the 2-D feature array's are). A model's features are found in a file
by name, so the file may order its columns differently or carry others. Every column
left out is named in a note by the caller.
"""
from __future__ import annotations

from ..errors import UserError


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

