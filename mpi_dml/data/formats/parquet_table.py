"""Parquet tables, one file or many, read through pyarrow.

A Parquet file is cut into row groups, each holding every column's values of a run of
rows; its footer records how many rows each group holds. Opening learns those counts
(each rank reads the footers of its share of the files, then the ranks pool them), so
rows are numbered across the files in order. A rank then reads only the row groups
that overlap its rows, and only the columns it was asked for, a bounded batch at a
time.

Columns are chosen by name. Those chosen as features or labels must be numbers or
booleans without nulls; columns of other types (ids as strings, timestamps) may sit
beside them as long as they are not chosen.
"""
from __future__ import annotations

import bisect
import collections
import contextlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import UserError
from ..sharding import chunk
from .base import Table, changed_error, check_file
from .files import column_difference


class ParquetTable(Table):
    """Parquet files with the same columns of the same types, read as one table."""

    def __init__(self, path, comm, files: list[str], schema: _Schema, groups: list, stamps):
        super().__init__(path, comm, list(schema.names), 0)
        self._files = files
        self._schema = schema
        self._stamps = stamps  # (size, mtime in ns) of each file when opened
        # Per file, the first row of each of its row groups, then its row count.
        self._group_starts = [np.concatenate([[0], np.cumsum(g, dtype=np.int64)]).tolist()
                              for g in groups]
        self._file_starts = [0]  # global row of each file's first row, then the total
        for starts in self._group_starts:
            self._file_starts.append(self._file_starts[-1] + starts[-1])
        self.n_rows = self._file_starts[-1]

    @classmethod
    def open(cls, path, comm):
        return cls.open_files(path, comm, [path])

    @classmethod
    def open_files(cls, path, comm, files: list[str]) -> ParquetTable:
        """Collective: ``files`` (in this order) as one table called ``path``."""
        lo, hi = chunk(len(files), comm.rank, comm.size)
        mine = comm.agreed(_inspect_files, files[lo:hi])
        pooled = comm.allgather(mine, what="Parquet footers")
        schema = comm.agreed(_common_schema, [p for p in pooled if p is not None])
        groups = [g for p in pooled if p is not None for g in p[1]]
        stamps = [s for p in pooled if p is not None for s in p[2]]
        return cls(path, comm, list(files), schema, groups, stamps)

    @property
    def files(self) -> list[str]:
        return list(self._files)

    def _prepare(self, lo, hi, ranges, cols):
        # The types are known to every rank alike, but a refusal must reach all of them
        # as one agreed error.
        self.comm.agreed(self._check_numeric, cols)

    def _check_numeric(self, cols):
        for c in cols:
            if not self._schema.numeric[c]:
                raise UserError(
                    f"{self.path}: column {self.columns[c]!r} holds {self._schema.types[c]} "
                    f"values, but feature and label columns must be numbers or booleans; "
                    f"leave it out by naming the columns to use (--features)")

    def _blocks(self, lo, hi, cols, state, max_rows):
        names = [self.columns[c] for c in cols]
        dtype = _common_dtype([self._schema.dtypes[c] for c in cols])
        first = bisect.bisect_right(self._file_starts, lo) - 1
        for i in range(max(first, 0), len(self._files)):
            start = self._file_starts[i]
            if start >= hi:
                break
            a, b = max(lo, start) - start, min(hi, self._file_starts[i + 1]) - start
            if a < b:
                yield from self._file_blocks(i, a, b, names, dtype, max_rows)

    def _file_blocks(self, i, a, b, names, dtype, max_rows):
        """Rows ``a .. b-1`` of file ``i``, from the row groups that hold them."""
        path, starts = self._files[i], self._group_starts[i]
        if not names:  # no columns asked for: nothing to read but the row count
            for s in range(a, b, max_rows):
                yield np.empty((min(max_rows, b - s), 0), dtype=dtype)
            return
        g0 = bisect.bisect_right(starts, a) - 1
        g1 = bisect.bisect_left(starts, b)  # groups g0 .. g1-1 overlap [a, b)
        wanted = list(dict.fromkeys(names))  # a column asked for twice is read once
        with _parquet_errors(path):
            if _stamp(path) != self._stamps[i]:
                raise changed_error(path)
            with pq.ParquetFile(path) as pf:
                md = pf.metadata
                if [md.row_group(g).num_rows for g in range(md.num_row_groups)] != \
                        np.diff(starts).tolist():
                    raise changed_error(path)
                # One buffer for every group: a fresh one per group leaves the heap
                # fragmented beside pyarrow's own buffers, and the process grows.
                sizes = np.diff(starts)[g0:g1]
                buffer = np.empty((int(sizes.max()), len(names)), dtype=dtype)
                for g in range(g0, g1):
                    s, e = max(a, starts[g]), min(b, starts[g + 1])
                    block = _read_group(pf, g, s - starts[g], e - starts[g], wanted, names,
                                        buffer[:e - s], path, s)
                    for k in range(0, e - s, max_rows):
                        yield block[k:k + max_rows]

    def where(self, row: int) -> str:
        i = min(bisect.bisect_right(self._file_starts, row) - 1, len(self._files) - 1)
        return f"{self._files[i]} row {row - self._file_starts[i]}"

    def __repr__(self):
        return (f"ParquetTable({self.path!r}, {len(self._files)} files, "
                f"{len(self.columns)} columns, {self.n_rows} rows)")


# --- what a footer says ---------------------------------------------------------------
class _Schema(collections.namedtuple("_Schema", "path names types numeric dtypes")):
    """The columns of a file: names, Arrow types (as text, for messages), whether each
    is a number or boolean, and the NumPy type of each such column."""


def _numeric(kind) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _inspect_files(files: list[str]):
    """(schema, row-group sizes of each file, stamps) of these files, which must agree
    with each other; None for no files."""
    if not files:
        return None
    schema, groups, stamps = None, [], []
    for path in files:
        this, sizes, stamp = _inspect_file(path)
        if schema is not None:
            _same_schema(schema, this)
        schema = schema or this
        groups.append(sizes)
        stamps.append(stamp)
    return schema, groups, stamps


def _inspect_file(path: str):
    check_file(path)
    with _parquet_errors(path):
        stamp = _stamp(path)
        with pq.ParquetFile(path) as pf:
            arrow = pf.schema_arrow
            md = pf.metadata
            sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    names = list(arrow.names)
    repeated = [n for n, k in collections.Counter(names).items() if k > 1]
    if repeated:
        raise UserError(f"{path}: column names must be unique, but "
                        f"{', '.join(map(repr, repeated))} appear more than once")
    kinds = [field.type for field in arrow]
    numeric = [_numeric(k) for k in kinds]
    dtypes = [np.dtype(k.to_pandas_dtype()).str if ok else None for k, ok in zip(kinds, numeric)]
    schema = _Schema(path, tuple(names), tuple(str(k) for k in kinds), tuple(numeric),
                     tuple(dtypes))
    return schema, sizes, stamp


def _same_schema(first: _Schema, other: _Schema):
    if first.names != other.names:
        raise UserError(column_difference(first.path, first.names, other.path, other.names))
    for name, a, b in zip(first.names, first.types, other.types):
        if a != b:
            raise UserError(f"{other.path} does not have the same columns as {first.path}: "
                            f"column {name!r} holds {b} there but {a} in {first.path}; "
                            f"files read as one table must have the same column types")


def _common_schema(pooled: list) -> _Schema:
    """The one schema of every rank's files (ranks with no files sent None)."""
    first = pooled[0][0]
    for schema, _, _ in pooled[1:]:
        _same_schema(first, schema)
    return first


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def _parquet_errors(path: str):
    try:
        yield
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable Parquet file ({exc})") from exc


# --- values -----------------------------------------------------------------------------
def _common_dtype(dtypes: list) -> np.dtype:
    """The file's own number type where every chosen column shares it, else float64."""
    kinds = set(dtypes)
    if len(kinds) == 1 and None not in kinds:
        return np.dtype(kinds.pop())
    return np.dtype(np.float64)


# Values decoded per read of a row group: a column chunk cannot be read in part, so a
# group is read a few columns at a time. pyarrow's decoding needs several times the
# decoded size in passing, so reading whole wide groups would cost far more memory
# than the rows they fill (and runs slower, out of cache).
_CELLS_PER_READ = 1 << 18


def _read_group(pf, g, s, e, wanted, names, out, path, first_row) -> np.ndarray:
    """Rows ``s .. e-1`` of row group ``g``, columns ``names``, into ``out``."""
    rows = pf.metadata.row_group(g).num_rows
    step = max(1, _CELLS_PER_READ // max(rows, 1))
    for c in range(0, len(wanted), step):
        part = pf.read_row_group(g, columns=wanted[c:c + step], use_threads=False)
        for name in wanted[c:c + step]:
            column = part.column(name).slice(s, e - s)
            if column.null_count:
                row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
                raise UserError(f"{path} row {first_row + row}: column {name!r} is null; "
                                f"feature and label columns need a value in every row")
            values = column.to_numpy(zero_copy_only=False)
            for j in (j for j, n in enumerate(names) if n == name):
                out[:, j] = values
        del part
    return out
