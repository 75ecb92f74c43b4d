"""The Table interface shared by every format, and file checks they all use."""
from __future__ import annotations

import contextlib
import operator
import os

import numpy as np

from ...errors import UserError


class Table:
    """Columns and row count of one data file, readable in row ranges by every rank.

    ``columns`` are every column the file offers; ``feature_columns`` are those that
    are features unless the user names others (all of them, except in ``.npz`` files,
    where only the columns of the 2-D feature array are). ``positional`` tables (a
    plain 2-D ``.npy``) name their columns by number, so only the count and order of
    their columns say which is which.
    """

    positional = False
    empty_reason = "has no data rows"

    def __init__(self, path: str, comm, columns: list[str], n_rows: int,
                 feature_columns: list[str] | None = None):
        self.path = path
        self.comm = comm
        self.columns = columns
        self.n_rows = n_rows
        self.feature_columns = list(columns if feature_columns is None else feature_columns)

    @classmethod
    def open(cls, path: str, comm) -> "Table":
        raise NotImplementedError

    def read(self, lo: int, hi: int, columns=None) -> np.ndarray:
        """Collective: global rows ``lo .. hi-1`` as float64, of every column or of the
        column indices ``columns``, in that order."""
        lo, hi = operator.index(lo), operator.index(hi)
        cols = list(range(len(self.columns))) if columns is None else [operator.index(c) for c in columns]
        if any(not 0 <= c < len(self.columns) for c in cols):
            raise ValueError(f"columns {cols} asked of {self.path}, which has {len(self.columns)}")
        # Every rank sees every request, so a bad range fails the same way everywhere
        # and formats that need to cooperate (CSV) know all boundaries.
        ranges = self.comm.allgather((lo, hi))
        for rank, (r_lo, r_hi) in enumerate(ranges):
            if not 0 <= r_lo <= r_hi <= self.n_rows:
                raise ValueError(
                    f"rank {rank} asked for rows [{r_lo}, {r_hi}) of {self.path}, "
                    f"which has {self.n_rows} rows"
                )
        return self._read(lo, hi, ranges, cols)

    def _read(self, lo: int, hi: int, ranges: list, cols: list[int]) -> np.ndarray:
        raise NotImplementedError

    def _new_block(self, lo: int, hi: int, width: int | None = None) -> np.ndarray:
        return np.empty((hi - lo, len(self.columns) if width is None else width),
                        dtype=np.float64)

    def where(self, row: int) -> str:
        """Where global data row ``row`` is, in words a user can look up."""
        return f"{self.path} row {row}"

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r}, {len(self.columns)} columns, {self.n_rows} rows)"


# --- files ----------------------------------------------------------------------------
def check_file(path: str) -> int:
    """Size of ``path``, or a UserError saying why it cannot be a data file."""
    if not os.path.exists(path):
        raise UserError(f"No such file: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a data file")
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise UserError(f"{path} is empty")
    return size


@contextlib.contextmanager
def reading(path: str):
    """Open ``path`` for binary reading; I/O failures become UserErrors."""
    try:
        with open(path, "rb") as f:
            yield f
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc


def changed_error(path: str) -> UserError:
    return UserError(f"{path} changed while it was being read")


def file_stamp(f) -> tuple[int, int]:
    """(size, modification time in ns) of an open file: a rewrite that keeps the
    size still moves the time."""
    st = os.fstat(f.fileno())
    return st.st_size, st.st_mtime_ns


