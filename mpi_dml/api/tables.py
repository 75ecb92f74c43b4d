"""This rank's rows of a data file, read with the engine's partitioned readers.

    $ mpiexec -n 4 python my_script.py

    import mpi_dml
    rows = mpi_dml.read_table("data.csv")                 # collective
    rows.values        # this rank's rows, float64, shape (rows here, columns)
    rows.first_row     # global index of the first of them
    rows.n_rows        # rows in the whole file
    rows.to_frame()    # a pandas DataFrame indexed by global row number

The rows are split as ``data.sharding.chunk`` splits them: contiguous, in file order,
the first ``n_rows % size`` ranks holding one more. Every rank reads only the bytes of
its own rows (CSV byte ranges, memory-mapped ``.npy``, ``.npz`` members mapped or
streamed, Parquet row groups, HDF5 hyperslabs); no rank ever holds the whole file.
Concatenating every rank's ``values`` in rank order gives the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

__all__ = ["TableRows", "read_table"]


@dataclass
class TableRows:
    """One rank's contiguous rows of a table.

    Attributes
    ----------
    values : ndarray of shape (rows on this rank, len(columns)), float64
    columns : list of str, the names of the columns of ``values``
    first_row : int, global index (0-based, data rows only) of this rank's first row
    n_rows : int, rows in the whole table
    path : str, the file read
    """

    values: np.ndarray
    columns: list
    first_row: int
    n_rows: int
    path: str

    def __len__(self) -> int:
        return self.values.shape[0]

    def to_frame(self):
        """The rows as a pandas DataFrame, indexed by their global row numbers."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("TableRows.to_frame needs pandas: pip install pandas") from None
        index = pd.RangeIndex(self.first_row, self.first_row + len(self), name="row")
        return pd.DataFrame(self.values, columns=list(self.columns), index=index)

    def __repr__(self):
        return (f"TableRows({self.path!r}, rows {self.first_row}..{self.first_row + len(self)}"
                f" of {self.n_rows}, {len(self.columns)} columns)")


def read_table(path, comm=None, *, columns=None, format=None) -> TableRows:
    """Read this rank's rows of ``path``: a CSV file with a header row, an ``.npy``,
    ``.npz``, Parquet or HDF5 file, or a folder or glob of such files read as one table.

    Collective: every rank of ``comm`` (an mpi4py communicator; None: every rank of
    the job) calls it with the same arguments. A problem with the file or with
    ``columns`` raises the same ``UserError`` (``errors.AgreedError``) on every rank.

    Parameters
    ----------
    path : str or os.PathLike
    comm : mpi4py communicator or None
    columns : list of str or None
        Names of the columns to read, in the order wanted (every column when None).
        A plain 2-D ``.npy`` names its columns "0", "1", ...; an ``.npz`` offers the
        columns of its 2-D array (``feature_names``, or "x0", "x1", ...) and then its
        1-D arrays by key, and an HDF5 file its datasets likewise.
    format : str or None
        "csv", "npy", "npz", "parquet" or "hdf5"; None or "auto" to go by the suffix
        (``.npy``, ``.npz``, ``.parquet``, ``.h5``, ``.hdf5``; anything else is CSV).

    Returns
    -------
    TableRows
    """
    from ..data import sharding
    from ..data.formats import open_table
    from .run import world

    comm = world(comm)
    wanted = comm.agreed(_column_names, columns)
    path = os.fspath(path)
    table = open_table(path, comm, format)
    indices = comm.agreed(_column_indices, table, wanted)
    lo, hi = sharding.chunk(table.n_rows, comm.rank, comm.size)
    values = table.read(lo, hi, indices)
    return TableRows(values=values, columns=[table.columns[i] for i in indices],
                     first_row=lo, n_rows=table.n_rows, path=path)


def _column_names(columns) -> list | None:
    if columns is None:
        return None
    if isinstance(columns, (str, bytes)) or not all(isinstance(c, str) for c in columns):
        raise UserError(f"The 'columns' parameter of read_table must be a list of column "
                        f"names such as ['age', 'income']. Got {columns!r} instead.")
    columns = list(columns)
    if not columns:
        raise UserError("The 'columns' parameter of read_table must name at least one "
                        "column. Got [] instead.")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise UserError(f"The 'columns' parameter of read_table must name each column "
                        f"once. Got {', '.join(map(repr, repeated))} more than once instead.")
    return columns


def _column_indices(table, wanted) -> list[int]:
    from ..data.columns import shown

    if wanted is None:
        return list(range(len(table.columns)))
    for name in wanted:
        if name not in table.columns:
            raise UserError(f"{table.path} has no column named '{name}' (in columns). "
                            f"Columns: {shown(table.columns)}")
    return [table.columns.index(name) for name in wanted]
