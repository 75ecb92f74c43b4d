"""This rank's rows of a data file, read with the engine's partitioned readers.

    $ mpiexec -n 4 python my_script.py

    import mpi_dml
    rows = mpi_dml.read_table("data.csv")                 # collective
    rows.values        # this rank's rows, float64, shape (rows here, columns)
    rows.first_row     # global index of the first of them
    rows.n_rows        # rows in the whole file
    rows.to_frame()    # a pandas DataFrame indexed by global row number

    rows = mpi_dml.read_table("clicks.svm")               # LIBSVM: sparse rows
    rows.values        # a scipy.sparse CSR matrix, float64, shape (rows here, n_features)
    rows.labels        # their labels, float64 (each line's first token)

The rows are split as ``data.sharding.chunk`` splits them: contiguous, in file order,
the first ``n_rows % size`` ranks holding one more. Every rank reads only the bytes of
its own rows (CSV and LIBSVM byte ranges, memory-mapped ``.npy``, ``.npz`` members
mapped or streamed, Parquet row groups, HDF5 hyperslabs); no rank ever holds the whole
file. Concatenating every rank's ``values`` in rank order gives the file.
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
    values : ndarray of shape (rows on this rank, len(columns)), float64; for a LIBSVM
        table, a ``scipy.sparse.csr_matrix`` of shape (rows on this rank, n_features),
        float64, with sorted column indices (never made dense)
    columns : list of str, the names of the columns of ``values`` (empty for LIBSVM,
        whose features are numbered)
    first_row : int, global index (0-based, data rows only) of this rank's first row
    n_rows : int, rows in the whole table
    path : str, the file read
    labels : ndarray of shape (rows on this rank,), float64, for a LIBSVM table (each
        line's first token); None for other tables, whose labels are a column
    """

    values: object
    columns: list
    first_row: int
    n_rows: int
    path: str
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.values.shape[0]

    def to_frame(self):
        """The rows as a pandas DataFrame, indexed by their global row numbers."""
        if self.labels is not None:
            raise TypeError(f"{self.path} holds sparse LIBSVM rows, which a DataFrame would "
                            f"make dense; use .values (a SciPy CSR matrix) and .labels")
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("TableRows.to_frame needs pandas: pip install pandas") from None
        index = pd.RangeIndex(self.first_row, self.first_row + len(self), name="row")
        return pd.DataFrame(self.values, columns=list(self.columns), index=index)

    def __repr__(self):
        width = (f"{self.values.shape[1]} features, sparse" if self.labels is not None
                 else f"{len(self.columns)} columns")
        return (f"TableRows({self.path!r}, rows {self.first_row}..{self.first_row + len(self)}"
                f" of {self.n_rows}, {width})")


def read_table(path, comm=None, *, columns=None, format=None, zero_based=False,
               n_features=None) -> TableRows:
    """Read this rank's rows of ``path``: a CSV file with a header row, an ``.npy``,
    ``.npz``, Parquet, HDF5 or LIBSVM file, or a folder or glob of such files read as
    one table.

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
        1-D arrays by key, and an HDF5 file its datasets likewise. LIBSVM files have
        no columns to choose: leave it None.
    format : str or None
        "csv", "npy", "npz", "parquet", "hdf5" or "libsvm"; None or "auto" to go by the
        suffix (``.npy``, ``.npz``, ``.parquet``, ``.h5``, ``.hdf5``, ``.svm``,
        ``.libsvm``, ``.svmlight``; anything else is CSV).
    zero_based : bool
        LIBSVM only: the file's feature indices start at 0 (default: at 1).
    n_features : int or None
        LIBSVM only: the number of features (columns of ``values``); None or 0 for the
        largest index seen + 1, over every rank and file.

    Returns
    -------
    TableRows
        For LIBSVM, ``values`` is a ``scipy.sparse.csr_matrix`` (float64) and
        ``labels`` holds the labels.
    """
    from ..data import sharding
    from ..data.formats import open_table
    from .run import world

    comm = world(comm)
    wanted = comm.agreed(_column_names, columns)
    path = os.fspath(path)
    comm.agreed(_check_libsvm_options, zero_based, n_features)
    table = open_table(path, comm, format, zero_based=zero_based, n_features=n_features)
    lo, hi = sharding.chunk(table.n_rows, comm.rank, comm.size)
    if table.sparse:
        from ..data.formats import read_csr

        comm.agreed(_no_columns, table, wanted)
        values, labels = read_csr(table, lo, hi, np.float64)
        return TableRows(values=values, columns=[], first_row=lo, n_rows=table.n_rows,
                         path=path, labels=labels)
    comm.agreed(_dense_options, table, zero_based, n_features)
    indices = comm.agreed(_column_indices, table, wanted)
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


def _check_libsvm_options(zero_based, n_features):
    if not isinstance(zero_based, bool):
        raise UserError(f"The 'zero_based' parameter of read_table must be True or False. "
                        f"Got {zero_based!r} instead.")
    if n_features is not None and (isinstance(n_features, bool) or not isinstance(
            n_features, (int, np.integer)) or n_features < 0):
        raise UserError(f"The 'n_features' parameter of read_table must be None or an "
                        f"integer >= 0. Got {n_features!r} instead.")


def _no_columns(table, wanted):
    if wanted is not None:
        raise UserError(f"{table.path} is a LIBSVM file, whose features are numbered, not "
                        f"named; leave out 'columns' to read its rows (values and labels)")


def _dense_options(table, zero_based, n_features):
    # Asked for by name, they would be silently meaningless here.
    given = [name for name, value in (("zero_based", zero_based), ("n_features", n_features))
             if value not in (False, None)]
    if given:
        what = " and ".join(repr(g) for g in given)
        verb = "parameters of read_table apply" if len(given) > 1 else "parameter of read_table applies"
        raise UserError(f"The {what} {verb} only to LIBSVM files; {table.path} is not one, "
                        f"so leave {'them' if len(given) > 1 else 'it'} out.")


def _column_indices(table, wanted) -> list[int]:
    from ..data.columns import shown

    if wanted is None:
        return list(range(len(table.columns)))
    for name in wanted:
        if name not in table.columns:
            raise UserError(f"{table.path} has no column named '{name}' (in columns). "
                            f"Columns: {shown(table.columns)}")
    return [table.columns.index(name) for name in wanted]
