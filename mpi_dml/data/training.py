"""A rank's share of the training data: read its rows, split off validation, check labels.

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
from .columns import choose_columns, unused_note
from .formats import open_table
from .labels import Split, check_class_range, infer_classes, read_sparse_split, read_split


@dataclass
class TrainingData:
    train: Split
    val: Split | None           # this rank's validation rows, if any validation is asked for
    feature_names: list | None  # None for sparse data, whose features are numbered
    n_classes: int              # 0 for regression
    shard_sizes: np.ndarray     # training rows per virtual shard, for every shard
    local_shards: np.ndarray    # training shards whose rows make up ``train``, ascending
    n_train: int
    n_val: int
    n_features: int = -1        # taken from feature_names when they are given

    def __post_init__(self):
        if self.feature_names is not None:
            self.n_features = len(self.feature_names)


def load_training(cfg, comm, table=None, val_table=None) -> TrainingData:
    """Read this rank's training (and validation) rows for ``cfg``; collective.

    The rows come from ``cfg.data`` (and ``cfg.val_data``), or from ``table`` (and
    ``val_table``): any ``Table``, such as rows already in memory (``arrays``).
    """
    table = table if table is not None else _open(cfg, cfg.data, comm)
    comm.agreed(_require_rows, table)
    n_shards = sharding.shard_count(table.n_rows, cfg.shards, cfg.plan)
    bounds = sharding.shard_bounds(table.n_rows, n_shards, cfg.plan)
    s0, s1 = sharding.owned_shards(n_shards, comm.rank, comm.size)
    lo, hi = int(bounds[s0]), int(bounds[s1])
    sparse = getattr(table, "sparse", False)
    if sparse:
        comm.agreed(_no_columns_for_sparse, cfg, table.path)
        names, n_features = None, table.n_features
        rows = read_sparse_split(table, lo, hi, dtype=cfg.dtype,
                                 classification=cfg.is_classifier)
    else:
        features, label_at, unused = comm.agreed(choose_columns, table, cfg.label_column,
                                                 cfg.features)
        names = [table.columns[i] for i in features]
        n_features = len(names)
        note = unused_note(table.path, unused)
        if note and comm.is_root:
            print(f"mpi_dml: note: {note}", file=sys.stderr)
        rows = read_split(table, lo, hi, features, label_at, dtype=cfg.dtype,
                          classification=cfg.is_classifier, names=names)

    n_classes = 0
    if cfg.is_classifier:
        # Classes come from the training file alone; validation labels are checked
        # against them, never allowed to widen the model.
        n_classes = comm.agreed(infer_classes, cfg, comm.allreduce_int(
            int(rows.y.max()) if rows.y.size else 0, op="max"))
        comm.agreed(check_class_range, rows, n_classes, table, lo, cfg.model)

    comm.agreed(_check_fraction_possible, cfg, table.path, n_shards, table.n_rows)
    held_out = sharding.validation_shards(n_shards, cfg.val_fraction, cfg.seed)
    sizes = np.diff(bounds)
    shard_sizes = np.where(held_out, 0, sizes)
    comm.agreed(_check_split, cfg, table.path, int(shard_sizes.sum()), table.n_rows)
    mine = np.arange(s0, s1)
    train, val = rows, None
    if cfg.val_fraction > 0:  # every rank gets a (possibly empty) validation split
        train, val = split_off_validation(rows, held_out[mine], sizes[mine])
    del rows
    n_val = table.n_rows - int(shard_sizes.sum()) if val is not None else 0

    if cfg.val_data or val_table is not None:
        if val_table is None:
            # Sparse validation rows are read with the training rows' feature count,
            # so an index beyond it is refused with its line.
            val_table = _open(cfg, cfg.val_data, comm, n_features if sparse else None)
        comm.agreed(_require_rows, val_table)
        vlo, vhi = sharding.chunk(val_table.n_rows, comm.rank, comm.size)
        if sparse:
            comm.agreed(_same_sparse_features, val_table, n_features, table.path)
            val = read_sparse_split(val_table, vlo, vhi, dtype=cfg.dtype,
                                    classification=cfg.is_classifier)
        else:
            val_columns = comm.agreed(_same_features, val_table, names, cfg.label_column,
                                      table.path)
            val = read_split(val_table, vlo, vhi, val_columns[:-1], val_columns[-1],
                             dtype=cfg.dtype, classification=cfg.is_classifier, names=names)
        if cfg.is_classifier:
            comm.agreed(check_class_range, val, n_classes, val_table, vlo, cfg.model)
        n_val = val_table.n_rows
    return TrainingData(train, val, names, n_classes, shard_sizes,
                        mine[~held_out[mine]], int(shard_sizes.sum()), n_val, n_features)


def _open(cfg, path, comm, n_features=None):
    """Collective: the table at ``path``, with the LIBSVM settings of ``cfg``."""
    return open_table(path, comm, cfg.format, zero_based=cfg.zero_based,
                      n_features=n_features or cfg.num_features or None)


# Rows moved at a time when the training rows close ranks in place.
_MOVE_ROWS = 1 << 14


def split_off_validation(rows: Split, held_out: np.ndarray, sizes: np.ndarray):
    """(training rows, validation rows) of a rank whose shards have ``sizes`` and are
    held out where ``held_out``.

    The validation rows (a small fraction) are copied out; the training rows then
    close ranks in place at the front of the same arrays, a bounded run at a time, so
    a rank never holds its rows twice.
    """
    take_train = np.repeat(~held_out, sizes)
    val = Split(rows.x[~take_train], rows.y[~take_train])
    if not isinstance(rows.x, np.ndarray):
        return Split(_close_ranks_csr(rows.x, take_train), rows.y[take_train]), val
    x, y = rows.x, rows.y
    to = 0
    for a, b in _runs(take_train):  # runs of training shards, not one shard at a time
        if a != to:  # moving rows towards the front: each run lands before it starts
            for s in range(a, b, _MOVE_ROWS):
                e = min(s + _MOVE_ROWS, b)
                x[to + s - a:to + e - a] = x[s:e]
                y[to + s - a:to + e - a] = y[s:e]
        to += b - a
    return Split(x[:to], y[:to]), val


def _close_ranks_csr(x, keep: np.ndarray):
    """The rows of CSR ``x`` where ``keep``, moved to the front of its own arrays, a
    bounded run at a time (as for dense rows): no second copy of the nonzeros."""
    import scipy.sparse as sp

    indptr, data, indices = x.indptr, x.data, x.indices
    lengths = np.diff(indptr)[keep]
    to = 0
    for a, b in _runs(keep):
        s, e = int(indptr[a]), int(indptr[b])
        if s != to:
            for u in range(s, e, _MOVE_ROWS * 64):
                v = min(u + _MOVE_ROWS * 64, e)
                data[to + u - s:to + v - s] = data[u:v]
                indices[to + u - s:to + v - s] = indices[u:v]
        to += e - s
    new_indptr = np.zeros(lengths.size + 1, dtype=indptr.dtype)
    np.cumsum(lengths, out=new_indptr[1:])
    return sp.csr_matrix((data[:to], indices[:to], new_indptr),
                         shape=(lengths.size, x.shape[1]), copy=False)


def _runs(mask: np.ndarray):
    """``[a, b)`` ranges where ``mask`` is True, in order."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return zip(edges[::2].tolist(), edges[1::2].tolist())


def _no_columns_for_sparse(cfg, path):
    if cfg.features:
        raise UserError(f"--features picks columns by name, and {path} is sparse (LIBSVM), "
                        f"whose features are numbered; leave --features out")


def _same_sparse_features(val_table, n_features, path):
    if not getattr(val_table, "sparse", False):
        raise UserError(f"{val_table.path} is not sparse (LIBSVM) like {path}; validation "
                        f"data needs the same format")
    if val_table.n_features > n_features:
        raise UserError(f"{val_table.path} has {val_table.n_features} features, more than "
                        f"the {n_features} of {path}; pass --num-features to fix the count")


def _require_rows(table):
    if table.n_rows == 0:
        raise UserError(f"{table.path} {table.empty_reason}")


def _check_fraction_possible(cfg, path, n_shards, n_rows):
    if cfg.val_fraction > 0 and n_shards < 2:
        raise UserError(f"--val-fraction holds out whole virtual shards, and {path} "
                        f"({n_rows} rows, --shards {cfg.shards}) has only {n_shards}; "
                        f"raise --shards or use --val-data")


def _check_split(cfg, path, n_train, n_rows):
    """Holding out whole shards must come close to the asked fraction and leave rows."""
    if n_train == 0:
        raise UserError(f"{path} leaves no training rows")
    if cfg.val_fraction > 0:
        got = 1 - n_train / n_rows
        if abs(got - cfg.val_fraction) > cfg.val_fraction / 2:
            raise UserError(f"--val-fraction {cfg.val_fraction} holds out whole shards, which "
                            f"with --shards {cfg.shards} gives {got:.2f} of the rows; raise "
                            f"--shards or use --val-data")


def _same_features(val_table, names, label_column, path) -> list[int]:
    """Columns of the validation table that hold the training features (by name, in
    the training order) and then the label."""
    columns = val_table.columns
    for name in [*names, label_column]:
        if name not in columns:
            role = "the label column" if name == label_column else "a feature"
            raise UserError(f"{val_table.path} has no column named '{name}', {role} in "
                            f"{path}; validation data needs the same columns")
    return [columns.index(name) for name in [*names, label_column]]
