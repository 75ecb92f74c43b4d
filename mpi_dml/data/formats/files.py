"""Which files a data path names, in which format, and many files read as one table.

    open_table("data/train.parquet", comm)         # one file; the format from its suffix
    open_table("data/part-*.csv", comm)             # a glob: the files it matches
    open_table("data/shards", comm)                 # a folder: its data files
    open_table("dump.bin", comm, fmt="npy")         # the format named, whatever the suffix
    open_table("clicks/*.svm", comm, n_features=2**24)  # LIBSVM, with its own options

A glob or a folder is one table whose rows are those of its files in sorted name order.
Rank 0 lists the files and every rank gets that list, so all ranks read the same table
even where their views of a shared file system lag. In a folder, names starting with
``.`` or ``_`` (``_SUCCESS`` and ``_metadata``, which Spark and Hive write beside their
data) and subfolders are skipped. Parquet and LIBSVM read their own file lists
(``ParquetTable`` splits the reading of footers across ranks, ``LibsvmTable`` the
files' bytes end to end); every other format becomes a ``ConcatTable`` over one
table per file.
"""
from __future__ import annotations

import bisect
import glob
import os
import re

from ...errors import UserError
from .base import Table, changed_error

# Format name -> the suffixes that select it. A file with any other suffix is CSV.
SUFFIXES = {
    "csv": (".csv",),
    "npy": (".npy",),
    "npz": (".npz",),
    "parquet": (".parquet",),
    "hdf5": (".h5", ".hdf5"),
    "libsvm": (".svm", ".libsvm", ".svmlight"),
}
FORMATS = tuple(SUFFIXES)
# What ``--format`` accepts: a format, or "auto" (from the suffix of the file or files).
FORMAT_CHOICES = ("auto",) + FORMATS
# Libraries a format needs beyond NumPy: a missing one is named with how to install it.
_LIBRARIES = {"parquet": "pyarrow", "hdf5": "h5py", "libsvm": "scipy"}

_GLOB_MAGIC = re.compile(r"[*?[]")


def format_of(path: str) -> str | None:
    """The format a file's suffix names, or None for a suffix of no known format."""
    suffix = os.path.splitext(path)[1].lower()
    return next((fmt for fmt, suffixes in SUFFIXES.items() if suffix in suffixes), None)


def check_format(fmt) -> str | None:
    """``fmt`` as a format name, or None for "from the suffix" (None, "" or "auto")."""
    if fmt is None or fmt == "" or fmt == "auto":
        return None
    if fmt not in FORMATS:
        raise UserError(f"The data format must be one of {', '.join(FORMAT_CHOICES)}. "
                        f"Got {fmt!r} instead.")
    return fmt


def table_class(fmt: str):
    """The ``Table`` subclass that reads ``fmt``; pyarrow, h5py and SciPy load only when
    used."""
    try:
        if fmt == "libsvm":
            from .libsvm_table import LibsvmTable
            return LibsvmTable
        if fmt == "parquet":
            from .parquet_table import ParquetTable
            return ParquetTable
        if fmt == "hdf5":
            from .hdf5_table import Hdf5Table
            return Hdf5Table
    except ImportError as exc:
        library = _LIBRARIES[fmt]
        raise UserError(f"reading {fmt} files needs {library}, which cannot be imported "
                        f"({exc}); install it with `pip install {library}`") from exc
    from .csv_table import CsvTable
    from .numpy_tables import NpyTable, NpzTable
    return {"csv": CsvTable, "npy": NpyTable, "npz": NpzTable}[fmt]


# --- which files ----------------------------------------------------------------------
def expand(path: str, fmt: str | None) -> tuple[list[str] | None, str]:
    """(files, format) of a data path: files is None where ``path`` is one file
    (existing or not: opening it says what is wrong), else the sorted files of a folder
    or glob. ``fmt`` (None: from the suffixes) is the format asked for."""
    if os.path.isdir(path):
        return _folder_files(path, fmt)
    if not os.path.exists(path) and _GLOB_MAGIC.search(path):
        return _glob_files(path, fmt)
    return None, fmt or format_of(path) or "csv"


def _folder_files(folder: str, fmt: str | None) -> tuple[list[str], str]:
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise UserError(f"cannot list the folder {folder}: {exc.strerror or exc}") from exc
    found: dict[str, list[str]] = {}
    for name in names:
        full = os.path.join(folder, name)
        kind = format_of(name)
        if kind is None or name.startswith((".", "_")) or not os.path.isfile(full):
            continue
        found.setdefault(kind, []).append(full)
    if fmt is not None:
        if fmt not in found:
            endings = " or ".join(SUFFIXES[fmt])
            raise UserError(f"{folder} is a directory with no {fmt} files in it (names "
                            f"ending in {endings}); name the files with a glob instead, "
                            f"such as {os.path.join(folder, '*')}")
        return found[fmt], fmt
    if not found:
        endings = ", ".join(s for suffixes in SUFFIXES.values() for s in suffixes)
        raise UserError(f"{folder} is a directory with no data files in it (names ending "
                        f"in {endings})")
    if len(found) > 1:
        counts = ", ".join(f"{len(files)} {kind}" for kind, files in found.items())
        first = next(iter(found))
        raise UserError(f"{folder} holds files of more than one format ({counts}); choose "
                        f"one with --format, or name the files with a glob such as "
                        f"{os.path.join(folder, '*' + SUFFIXES[first][0])}")
    kind, files = next(iter(found.items()))
    return files, kind


def _glob_files(pattern: str, fmt: str | None) -> tuple[list[str], str]:
    files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not files:
        raise UserError(f"{pattern} matches no files")
    if fmt is not None:
        return files, fmt
    kinds = {}
    for path in files:
        kinds.setdefault(format_of(path) or "csv", path)
    if len(kinds) > 1:
        (a_kind, a), (b_kind, b) = list(kinds.items())[:2]
        raise UserError(f"{pattern} matches files of more than one format: {a} ({a_kind}) "
                        f"and {b} ({b_kind}); narrow the pattern, or read them all as one "
                        f"format with --format")
    return files, next(iter(kinds))


# --- many files as one table ------------------------------------------------------------
def column_difference(first: str, first_columns, other: str, other_columns) -> str:
    """A message naming two files whose columns differ, and how."""
    missing = [c for c in first_columns if c not in other_columns]
    extra = [c for c in other_columns if c not in first_columns]
    if missing or extra:
        what = "; ".join(part for part in (
            f"it lacks {_names(missing)}" if missing else "",
            f"it has {_names(extra)}, which {first} does not" if extra else "") if part)
    else:
        what = "its columns come in another order"
    return (f"{other} does not have the same columns as {first}: {what}; files read as "
            f"one table must have the same columns")


def _names(names, limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def _same_layout(first: Table, other: Table):
    if first.columns != other.columns:
        raise UserError(column_difference(first.path, first.columns, other.path, other.columns))
    if first.feature_columns != other.feature_columns:
        raise UserError(f"{other.path} does not have the same feature columns as {first.path} "
                        f"({_names(other.feature_columns)} against "
                        f"{_names(first.feature_columns)}); files read as one table must "
                        f"have the same layout")


def _clip(lo: int, hi: int, start: int, stop: int) -> tuple[int, int]:
    """The part of rows [lo, hi) in the file holding rows [start, stop), in that file's
    own row numbers; an empty part still lies inside the file."""
    a = min(max(lo, start), stop) - start
    return a, max(a, min(max(hi, start), stop) - start)


class ConcatTable(Table):
    """Files of one format with the same columns, read as one table: the rows of the
    first file, then those of the second, and so on."""

    def __init__(self, path, comm, parts: list[Table]):
        first = parts[0]
        super().__init__(path, comm, list(first.columns), sum(p.n_rows for p in parts),
                         first.feature_columns)
        self.positional = first.positional
        self.empty_reason = f"has no data rows in any of its {len(parts)} files"
        self._parts = parts
        self._starts = [0]  # global row of each file's first row, then the total
        for part in parts:
            self._starts.append(self._starts[-1] + part.n_rows)

    @classmethod
    def open(cls, path, comm, files: list[str], part_class) -> ConcatTable:
        """Collective: open every file in turn (each open is itself collective)."""
        parts = []
        for file in files:
            part = part_class.open(file, comm)
            if parts:
                comm.agreed(_same_layout, parts[0], part)
            parts.append(part)
        return cls(path, comm, parts)

    @property
    def files(self) -> list[str]:
        return [part.path for part in self._parts]

    def _part_ranges(self, i: int, ranges):
        start, stop = self._starts[i], self._starts[i + 1]
        return [_clip(lo, hi, start, stop) for lo, hi in ranges]

    def _prepare(self, lo, hi, ranges, cols):
        # Every rank walks the files in the same order and enters the same collectives;
        # a file no rank reads from is skipped by all of them alike.
        states = []
        for i, part in enumerate(self._parts):
            part_ranges = self._part_ranges(i, ranges)
            if all(a == b for a, b in part_ranges):
                states.append(None)
                continue
            a, b = part_ranges[self.comm.rank]
            states.append(part._prepare(a, b, part_ranges, cols))
        return states

    def _blocks(self, lo, hi, cols, state, max_rows):
        for i, part in enumerate(self._parts):
            a, b = _clip(lo, hi, self._starts[i], self._starts[i + 1])
            if a == b:
                continue
            got = 0
            for block in part._blocks(a, b, cols, state[i], max_rows):
                got += len(block)
                if got > b - a:
                    raise changed_error(part.path)
                yield block
            if got != b - a:
                raise changed_error(part.path)

    def where(self, row: int) -> str:
        i = min(bisect.bisect_right(self._starts, row) - 1, len(self._parts) - 1)
        return self._parts[i].where(row - self._starts[i])

    def __repr__(self):
        return (f"ConcatTable({self.path!r}, {len(self._parts)} files, "
                f"{len(self.columns)} columns, {self.n_rows} rows)")


def open_files(path: str, comm, fmt: str | None, zero_based: bool = False,
               n_features: int | None = None, features_from: str | None = None) -> Table:
    """Collective: the table of a file, folder or glob (see ``formats.open_table``).
    ``zero_based``, ``n_features`` and ``features_from`` (what fixed ``n_features``, for
    messages) are LIBSVM's; other formats have no use for them."""
    fmt = comm.agreed(check_format, fmt)
    files, fmt = comm.bcast_obj(comm.agreed_on_root(expand, path, fmt), what="file list")
    cls = comm.agreed(table_class, fmt)
    options = ({"zero_based": zero_based, "n_features": n_features,
                "features_from": features_from} if fmt == "libsvm" else {})
    if files is None:
        return cls.open(path, comm, **options)
    if len(files) == 1:
        return cls.open(files[0], comm, **options)
    if hasattr(cls, "open_files"):  # a format that reads a list of files itself
        return cls.open_files(path, comm, files, **options)
    return ConcatTable.open(path, comm, files, cls)


def names_libsvm(path: str, fmt: str | None) -> bool:
    """Whether a data path (as given, before any file is opened) is LIBSVM: by ``fmt``,
    else by its suffix (a glob's too), else, for a folder, by the files in it."""
    fmt = None if fmt in (None, "", "auto") else fmt
    if fmt is not None or not path:
        return fmt == "libsvm"
    if format_of(path) == "libsvm":
        return True
    if os.path.isdir(path):
        try:
            return any(format_of(name) == "libsvm" for name in os.listdir(path))
        except OSError:
            return False
    return False
