"""Partitioned readers for tables stored as CSV, ``.npy``, ``.npz``, Parquet, HDF5 or
LIBSVM files, one file or many read as one table (a folder, or a glob such as
``data/part-*.parquet``; see ``files``).

Every rank reads only its own part of a file; no rank ever holds the whole dataset.
Opening and reading are both collectives:

    >>> table = open_table("data.csv", comm)   # every rank learns columns and n_rows
    >>> block = table.read(lo, hi)             # each rank passes its own rows [lo, hi)

``read`` returns a float64, C-contiguous array of shape ``(hi - lo, len(columns))``.
Ranks may ask for any rows, an empty range included; every rank must call it.

LIBSVM tables (``table.sparse`` is True; dense tables have it False) hold sparse rows
and a label per line instead of columns; they are read with ``read_csr``:

    >>> table = open_table("clicks.svm", comm, zero_based=False, n_features=None)
    >>> x, y = read_csr(table, lo, hi, np.float32)   # SciPy CSR matrix, float64 labels

How each format is split:

* CSV: the bytes after the header are cut into ``comm.size`` equal byte ranges. Each
  rank scans only its range and counts the lines that *start* in it, which gives the
  global row count (sum) and each range's first global row (exclusive scan). To read,
  the ranks learn the byte offsets of every requested boundary row from whichever rank
  owns that row's first byte, then each rank reads and parses just its own bytes.
* ``.npy``: memory-mapped, so a rank only touches the pages of its rows.
* ``.npz``: members stored uncompressed (``np.savez``) are memory-mapped at their data
  offset inside the zip; compressed members (``np.savez_compressed``) are decompressed
  as a stream, keeping only the wanted rows.
* Parquet (through pyarrow): a rank reads only the row groups that hold its rows, and
  only the columns asked for.
* HDF5 (through h5py, no MPI build needed): each rank reads its own hyperslab of ``X``
  and of the 1-D datasets, a block at a time.
* LIBSVM: as CSV, byte ranges aligned to line ends, over the files' bytes end to end;
  each rank scans its range at open (rows, and the largest index, agreed by all) and
  parses only its own rows' bytes (``libsvm_table``).
* Many files: the rows of each file in turn; a rank reads only the files its rows are in.

Anything that can fail on some ranks only (a bad cell, an unreadable file) runs under
``Comm.agreed`` before the next collective, so one failing rank never leaves the others
waiting: every rank raises the same ``AgreedError``.
"""
from __future__ import annotations

import os

from .base import Table
from .csv_table import CsvTable
from .files import FORMAT_CHOICES, FORMATS, ConcatTable, open_files
from .numpy_tables import NpyTable, NpzTable

__all__ = ["open_table", "read_csr", "Table", "CsvTable", "NpyTable", "NpzTable",
           "ParquetTable", "Hdf5Table", "LibsvmTable", "ConcatTable", "FORMATS",
           "FORMAT_CHOICES"]


def open_table(path, comm, fmt: str | None = None, zero_based: bool = False,
               n_features: int | None = None, features_from: str | None = None) -> Table:
    """Collective: open a table, learning its columns and global row count.

    ``path`` is a file, a folder or a glob. ``fmt`` is one of ``FORMATS`` (csv, npy,
    npz, parquet, hdf5, libsvm), or None or "auto" to go by the suffix: ``.npy``,
    ``.npz``, ``.parquet``, ``.h5`` and ``.hdf5``, ``.svm``, ``.libsvm`` and
    ``.svmlight`` name their formats, and any other file is read as CSV. A folder or
    glob takes the format of its files.

    LIBSVM only: ``zero_based`` says the indices start at 0 (else at 1), and
    ``n_features`` fixes the feature count (None or 0: the largest index seen + 1,
    agreed across ranks and files); ``features_from`` names what fixed ``n_features`` in
    the message for an index beyond it (default: the ``--num-features`` flag). Other
    formats ignore all three.
    """
    return open_files(os.fspath(path), comm, fmt, zero_based, n_features, features_from)


def __getattr__(name):
    # pyarrow, h5py and SciPy load when a file of theirs is opened, not with this package.
    if name == "ParquetTable":
        from .parquet_table import ParquetTable
        return ParquetTable
    if name == "Hdf5Table":
        from .hdf5_table import Hdf5Table
        return Hdf5Table
    if name in ("LibsvmTable", "read_csr"):  # SciPy loads with the first LIBSVM file
        from . import libsvm_table
        return getattr(libsvm_table, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
