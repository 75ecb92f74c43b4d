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
    sparse = False  # LIBSVM tables hold sparse rows, read with ``read_csr``
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

    def read(self, lo: int, hi: int, columns=None, dtype=np.float64) -> np.ndarray:
        """Collective: global rows ``lo .. hi-1`` of every column or of the column
        indices ``columns``, in that order, as one C-contiguous array of ``dtype``."""
        rows = self.rows(lo, hi, columns)
        return self.comm.agreed(rows.gather, dtype)

    def rows(self, lo: int, hi: int, columns=None) -> "Rows":
        """Collective: get ready to read global rows ``lo .. hi-1`` of ``columns``.

        Whatever needs the other ranks (CSV's line offsets, rows held by other ranks)
        happens here; reading the returned ``Rows`` block by block is local, so a
        caller can parse, check and convert a bounded block at a time.
        """
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
        return Rows(self, lo, hi, cols, self._prepare(lo, hi, ranges, cols))

    # --- what a format provides -------------------------------------------------------
    def _prepare(self, lo: int, hi: int, ranges: list, cols: list[int]):
        """Collective: whatever reading ``[lo, hi)`` needs from other ranks, given every
        rank's range. Runs on every rank; its result is passed to ``_blocks``."""
        return None

    def _blocks(self, lo: int, hi: int, cols: list[int], state, max_rows: int):
        """Local: yield rows ``lo .. hi-1`` of ``cols`` in order, as 2-D numeric arrays
        of at most ``max_rows`` rows each (in the file's own number type, or float64).

        A format may fill the same buffer again for the next block: callers use or
        copy each block before they ask for the next."""
        raise NotImplementedError

    def where(self, row: int) -> str:
        """Where global data row ``row`` is, in words a user can look up."""
        return f"{self.path} row {row}"

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r}, {len(self.columns)} columns, {self.n_rows} rows)"


# Cells per block handed out by ``Rows.blocks``: 1M cells is 8 MB of float64, small
# next to a rank's rows yet large enough that per-block overheads vanish.
BLOCK_CELLS = 1 << 20


class Rows:
    """Rows ``[lo, hi)`` of some columns of a table, ready to be read locally."""

    def __init__(self, table: Table, lo: int, hi: int, cols: list[int], state):
        self.table, self.lo, self.hi, self.cols, self._state = table, lo, hi, cols, state

    def __len__(self):
        return self.hi - self.lo

    def blocks(self, max_cells: int = BLOCK_CELLS):
        """Yield ``(first global row, block)`` in order; each block holds at most about
        ``max_cells`` cells and may be overwritten by the next, so use or copy it first.
        Local: raise here, and the caller's agreement stops the job."""
        max_rows = max(1, max_cells // max(len(self.cols), 1))
        row = self.lo
        if self.hi > self.lo:
            for block in self.table._blocks(self.lo, self.hi, self.cols, self._state, max_rows):
                if block.ndim != 2 or block.shape[1] != len(self.cols) or row + len(block) > self.hi:
                    raise changed_error(self.table.path)
                yield row, block
                row += len(block)
        if row != self.hi:
            raise changed_error(self.table.path)

    def gather(self, dtype=np.float64) -> np.ndarray:
        """Every row in one C-contiguous array of ``dtype``."""
        out = np.empty((len(self), len(self.cols)), dtype=dtype)
        for row, block in self.blocks():
            out[row - self.lo:row - self.lo + len(block)] = block
        return out


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


