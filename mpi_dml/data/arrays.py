"""Rows already in memory, split across ranks in any way, read like a file.

    >>> table = ArrayTable(x, y, comm, names=["age", "income"])   # this rank's rows
    >>> block = table.read(lo, hi)                                  # global rows [lo, hi)

Each rank holds some rows (any number, none included); the global table is every
rank's rows concatenated in rank order. ``read`` is collective, like a file's: each
rank asks for the global rows it needs (its virtual shards), and the rows move to it
from the ranks that hold them in one Alltoallv. So arrays passed to the API go through
the same data plan, checks and splits as a file, and give the model that the command
line would train on those rows concatenated.
"""
from __future__ import annotations

import numpy as np

from .formats.base import Table

LABEL = "__label__"  # the label's column name inside the table; never a feature


def label_name(names) -> str:
    """A name for the label column that no feature has (a DataFrame may well hold a
    column called ``__label__``)."""
    taken, name = set(names or ()), LABEL
    while name in taken:
        name += "_"
    return name


def held_rows(comm, n_local: int) -> list[tuple[int, int]]:
    """Collective: the global ``[start, stop)`` rows each rank holds, in rank order."""
    counts = comm.allgather(int(n_local), what="rows held")
    starts = np.concatenate(([0], np.cumsum(counts))).astype(int)
    return [(int(starts[r]), int(starts[r + 1])) for r in range(comm.size)]


def labels_of(x, y) -> np.ndarray:
    """``y`` as one label per row of ``x`` (zeros when there are none)."""
    y = np.zeros(x.shape[0]) if y is None else np.asarray(y).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows but x has {x.shape[0]}")
    return y


def where_held(path, held, row: int) -> str:
    rank = next(r for r, (a, b) in enumerate(held) if a <= row < b)
    return f"{path}: row {row - held[rank][0]} of rank {rank}"


class ArrayTable(Table):
    """``x`` (rows x features) and ``y`` (one per row, or None) of this rank.

    The caller checks the rows first, under an agreement across ranks: a rank that
    raises here (a wrong shape, values that are not numbers) while the others go on
    leaves them waiting in the next collective.
    """

    def __init__(self, x, y, comm, *, names=None, label: str | None = None,
                 path: str = "the rows given to fit"):
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D (rows, features); got shape {x.shape}")
        names = list(names) if names is not None else [f"x{j}" for j in range(x.shape[1])]
        label = label or label_name(names)
        if label in names:
            raise ValueError(f"the label's name {label!r} is also a feature's")
        self._held = held_rows(comm, x.shape[0])
        super().__init__(path, comm, [*names, label], self._held[-1][1],
                         feature_columns=names)
        self._x = x
        self._y = labels_of(x, y)

    def where(self, row: int) -> str:
        return where_held(self.path, self._held, row)

    def _prepare(self, lo, hi, ranges, cols):
        start, stop = self._held[self.comm.rank]
        send_rows, parts = [], []
        for r_lo, r_hi in ranges:  # what each rank asks for that this rank holds
            a, b = max(r_lo, start), min(r_hi, stop)
            send_rows.append(max(b - a, 0))
            if b > a:
                parts.append(self._columns(a - start, b - start, cols))
        send = np.concatenate(parts) if parts else np.empty((0, len(cols)))
        recv_rows = [max(min(hi, b) - max(lo, a), 0) for a, b in self._held]
        out = np.empty((hi - lo, len(cols)))
        return self.comm.alltoallv_rows(send, send_rows, out, recv_rows, what="rows")

    def _blocks(self, lo, hi, cols, state, max_rows):
        yield state  # the rows came in one exchange, in ``_prepare``

    def _columns(self, a: int, b: int, cols) -> np.ndarray:
        label = len(self.columns) - 1
        block = np.empty((b - a, len(cols)), dtype=np.float64)
        for j, c in enumerate(cols):
            block[:, j] = self._y[a:b] if c == label else self._x[a:b, c]
        return block


class SparseArrayTable:
    """``x`` (a SciPy sparse matrix, rows x features) and ``y`` of this rank, read like
    a LIBSVM file: ``sparse`` is True, and ``rows(lo, hi).blocks()`` yields
    ``(first row, labels, CSR rows)``.

    Rows move between ranks as they do for ``ArrayTable``, in two Alltoallv: the
    nonzero count of each row, then each nonzero's (column, value). Nothing is made
    dense. Every rank passes the same feature count (the matrices' widths).
    """

    sparse = True
    empty_reason = "has no rows"

    def __init__(self, x, y, comm, *, path: str = "the rows given to fit"):
        import scipy.sparse as sp

        if not sp.issparse(x) or x.ndim != 2:
            raise ValueError("x must be a 2-D SciPy sparse matrix")
        x = sp.csr_matrix(x, dtype=np.float64)
        x.sum_duplicates()  # sorted, unique column indices in every row
        self.path, self.comm = path, comm
        self._held = held_rows(comm, x.shape[0])
        self.n_rows = self._held[-1][1]
        self.n_features = int(x.shape[1])
        self._x = x
        self._y = np.asarray(labels_of(x, y), np.float64)

    def where(self, row: int) -> str:
        return where_held(self.path, self._held, row)

    def rows(self, lo: int, hi: int) -> "_SparseRows":
        """Collective: global rows ``[lo, hi)`` of every rank, moved to the ranks that
        asked for them."""
        import scipy.sparse as sp

        ranges = self.comm.allgather((int(lo), int(hi)), what="row ranges")
        start, stop = self._held[self.comm.rank]
        x, indptr = self._x, self._x.indptr
        send_rows, send_nnz, lengths, pairs = [], [], [], []
        for r_lo, r_hi in ranges:  # what each rank asks for that this rank holds
            a, b = max(r_lo, start) - start, min(r_hi, stop) - start
            if b <= a:
                send_rows.append(0)
                send_nnz.append(0)
                continue
            send_rows.append(b - a)
            send_nnz.append(int(indptr[b] - indptr[a]))
            lengths.append(np.diff(indptr[a:b + 1]))
            s, e = indptr[a], indptr[b]
            pairs.append(np.column_stack([x.indices[s:e], x.data[s:e]]))
        recv_rows = [max(min(hi, b) - max(lo, a), 0) for a, b in self._held]
        length = self.comm.alltoallv_rows(
            np.concatenate(lengths).reshape(-1, 1) if lengths else np.empty((0, 1)),
            send_rows, np.empty((hi - lo, 1)), recv_rows, what="row lengths")[:, 0]
        # How many nonzeros arrive from each rank: the lengths of its rows, summed.
        cuts = np.concatenate(([0], np.cumsum(recv_rows)))
        total = np.concatenate(([0], np.cumsum(length)))
        recv_nnz = [int(total[cuts[r + 1]] - total[cuts[r]]) for r in range(self.comm.size)]
        got = self.comm.alltoallv_rows(
            np.concatenate(pairs) if pairs else np.empty((0, 2)), send_nnz,
            np.empty((int(total[-1]), 2)), recv_nnz, what="nonzeros")
        block = sp.csr_matrix((got[:, 1], got[:, 0].astype(np.int64), total.astype(np.int64)),
                              shape=(hi - lo, self.n_features))
        labels = np.empty((hi - lo, 1))
        ys = [self._y[max(r_lo, start) - start:min(r_hi, stop) - start].reshape(-1, 1)
              for r_lo, r_hi in ranges if min(r_hi, stop) > max(r_lo, start)]
        self.comm.alltoallv_rows(np.concatenate(ys) if ys else np.empty((0, 1)), send_rows,
                                 labels, recv_rows, what="labels")
        return _SparseRows(lo, hi, labels[:, 0], block)


class _SparseRows:
    def __init__(self, lo, hi, y, x):
        self.lo, self.hi, self._y, self._x = lo, hi, y, x

    def __len__(self):
        return self.hi - self.lo

    def blocks(self, max_nnz: int | None = None):
        if self.hi > self.lo:
            yield self.lo, self._y, self._x
