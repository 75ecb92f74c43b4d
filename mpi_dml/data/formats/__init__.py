"""Partitioned readers for tables stored as CSV, ``.npy`` or ``.npz`` files.

Every rank reads only its own part of a file; no rank ever holds the whole dataset.
Opening and reading are both collectives:

    >>> table = open_table("data.csv", comm)   # every rank learns columns and n_rows
    >>> block = table.read(lo, hi)             # each rank passes its own rows [lo, hi)

``read`` returns a float64, C-contiguous array of shape ``(hi - lo, len(columns))``.
Ranks may ask for any rows, an empty range included; every rank must call it.

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

Anything that can fail on some ranks only (a bad cell, an unreadable file) runs under
``Comm.agreed`` before the next collective, so one failing rank never leaves the others
waiting: every rank raises the same ``AgreedError``.
"""
from __future__ import annotations

import os

from .base import Table
from .csv_table import CsvTable
from .numpy_tables import NpyTable, NpzTable

__all__ = ["open_table", "Table", "CsvTable", "NpyTable", "NpzTable"]


def open_table(path, comm) -> "Table":
    """Collective: open a table, learning its columns and global row count.

    ``.npy`` and ``.npz`` files are read as NumPy arrays; anything else is read as CSV.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    cls = {".npy": NpyTable, ".npz": NpzTable}.get(suffix, CsvTable)
    return cls.open(path, comm)
