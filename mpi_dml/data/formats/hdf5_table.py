"""HDF5 tables, read through h5py: the ``.npz`` layout, in an HDF5 file.

The file holds a 2-D numeric dataset ``X`` (rows, features), or else exactly one 2-D
numeric dataset under any name; its columns are named by an optional ``feature_names``
(a 1-D string dataset, or an attribute of ``X``), else ``x0, x1, ...``. Every other 1-D
numeric dataset at the top level is a column of its own, by its name: the label, and
anything else (row ids, weights), which is a feature only when named.

Each rank opens the file read-only and reads its own hyperslab, a block of rows at a
time, so no MPI build of HDF5 is needed. HDF5's file locking is turned off for these
reads: parallel file systems often refuse the locks, and a rewrite while reading is
caught by the file's size and modification time instead.
"""
from __future__ import annotations

import collections
import contextlib
import os

import h5py
import numpy as np

from ...errors import UserError
from .base import Table, changed_error, check_file

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


class Hdf5Table(Table):
    """One 2-D feature dataset plus 1-D numeric datasets of the same length."""

    def __init__(self, path, comm, columns, n_rows, datasets: list[tuple[str, int, str]],
                 stamp):
        width = datasets[0][1]
        super().__init__(path, comm, columns, n_rows, feature_columns=columns[:width])
        self._datasets = datasets  # (name, columns, dtype): the 2-D one, then the 1-D ones
        self._stamp = stamp

    @classmethod
    def open(cls, path, comm):
        columns, n_rows, datasets, stamp = comm.agreed(_inspect_h5, path)
        return cls(path, comm, columns, n_rows, datasets, stamp)

    def _sources(self, cols):
        """For each column asked for: (dataset index, column within it)."""
        out, first = {}, 0
        for k, (_, width, _) in enumerate(self._datasets):
            for j in range(width):
                out[first + j] = (k, j)
            first += width
        return [out[c] for c in cols]

    def _blocks(self, lo, hi, cols, state, max_rows):
        sources = self._sources(cols)
        dtypes = {self._datasets[k][2] for k, _ in sources}
        dtype = np.dtype(dtypes.pop()) if len(dtypes) == 1 else np.dtype(np.float64)
        width = self._datasets[0][1]
        every = cols == list(range(width))
        with _h5_errors(self.path), _open(self.path) as f:
            if _stamp(self.path) != self._stamp:
                raise changed_error(self.path)
            arrays = [f[name] for name, _, _ in self._datasets]
            # One buffer for every block: fresh ones leave the heap fragmented and the
            # process grows (a block is used before the next is asked for).
            buffer = None if every else np.empty((min(max_rows, hi - lo), len(cols)), dtype)
            for a in range(lo, hi, max_rows):
                b = min(a + max_rows, hi)
                if every:  # the feature dataset's rows, as stored: no copy here
                    yield _read(arrays[0], np.s_[a:b], self.path)
                    continue
                out = buffer[:b - a]
                self._fill(out, arrays, sources, a, b, max_rows * max(len(cols), 1))
                yield out

    def _fill(self, out, arrays, sources, a, b, max_cells):
        """Rows ``a .. b-1`` of the chosen columns into ``out``."""
        x_cols = [(j, c) for j, (k, c) in enumerate(sources) if k == 0]
        if x_cols:
            # One hyperslab spanning the chosen columns of X, in runs of rows small
            # enough that it holds about as many cells as ``out`` does.
            c0 = min(c for _, c in x_cols)
            c1 = max(c for _, c in x_cols) + 1
            step = max(1, max_cells // (c1 - c0))
            targets = [j for j, _ in x_cols]
            picks = [c - c0 for _, c in x_cols]
            for s in range(a, b, step):
                e = min(s + step, b)
                piece = _read(arrays[0], np.s_[s:e, c0:c1], self.path)
                if picks == list(range(c1 - c0)) and targets == list(range(targets[0], targets[0] + len(targets))):
                    out[s - a:e - a, targets[0]:targets[0] + len(targets)] = piece
                else:
                    out[s - a:e - a, targets] = piece[:, picks]
        for j, (k, _) in enumerate(sources):
            if k:
                out[:, j] = _read(arrays[k], np.s_[a:b], self.path)


def _read(dataset, selection, path: str) -> np.ndarray:
    try:
        return dataset[selection]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot read dataset {dataset.name.lstrip('/')!r} "
                        f"({exc})") from exc


@contextlib.contextmanager
def _h5_errors(path: str):
    try:
        yield
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({exc})") from exc


def _open(path: str):
    return h5py.File(path, "r", locking=False)


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _numeric(dataset) -> bool:
    dtype = dataset.dtype
    return dtype.names is None and dtype.subdtype is None and dtype.kind in _NUMERIC_KINDS


def _inspect_h5(path: str):
    check_file(path)
    with _h5_errors(path):
        stamp = _stamp(path)
        with _open(path) as f:
            datasets = {}
            for name in f:
                obj = f.get(name)
                if isinstance(obj, h5py.Dataset):
                    datasets[name] = obj
            features = _feature_dataset(datasets, path)
            n_rows, width = features.shape
            names = _feature_names(datasets.get("feature_names"), features, width, path)
            key = features.name.lstrip("/")
            extra = [(name, d) for name, d in datasets.items() if name != key
                     and name != "feature_names" and d.ndim == 1 and _numeric(d)]
            for name, d in extra:
                if d.shape[0] != n_rows:
                    raise UserError(f"{path}: dataset {name!r} has {d.shape[0]} rows but "
                                    f"{key!r} has {n_rows}; every 1-D dataset is a column "
                                    f"and needs one value per row")
            layout = [(key, width, features.dtype.str)] + [(name, 1, d.dtype.str)
                                                            for name, d in extra]
    columns = names + [name for name, _ in extra]
    repeated = [name for name, k in collections.Counter(columns).items() if k > 1]
    if repeated:
        raise UserError(f"{path}: column names must be unique, but "
                        f"{', '.join(map(repr, repeated))} appear more than once "
                        f"(feature_names and dataset names together)")
    return columns, n_rows, layout, stamp


def _feature_dataset(datasets: dict, path: str):
    if "X" in datasets:
        features = datasets["X"]
        if features.ndim != 2 or not _numeric(features):
            raise UserError(f"{path}: dataset 'X' should be a 2-D numeric dataset (rows, "
                            f"features), but it is {features.ndim}-D of {features.dtype}")
        return features
    two_d = [name for name, d in datasets.items() if d.ndim == 2 and _numeric(d)]
    if len(two_d) != 1:
        found = ", ".join(repr(name) for name in two_d) or "none"
        raise UserError(f"{path} should hold one 2-D numeric dataset of features at its "
                        f"top level (or name it 'X'); found {found}")
    return datasets[two_d[0]]


def _feature_names(dataset, features, width: int, path: str) -> list[str]:
    where = "dataset 'feature_names'"
    if dataset is not None:
        if h5py.check_string_dtype(dataset.dtype) is None or dataset.shape != (width,):
            raise UserError(f"{path}: {where} should be 1-D with {width} strings, one per "
                            f"column of {features.name.lstrip('/')!r}, but it has shape "
                            f"{dataset.shape} and type {dataset.dtype}")
        values = dataset.asstr()[()].tolist()
    elif "feature_names" in features.attrs:
        where = f"attribute 'feature_names' of {features.name.lstrip('/')!r}"
        values = np.asarray(features.attrs["feature_names"])
        texts = all(isinstance(v, (str, bytes)) for v in values.tolist())
        if values.shape != (width,) or not texts:
            raise UserError(f"{path}: {where} should be 1-D with {width} strings, one per "
                            f"column, but it has shape {values.shape} and type {values.dtype}")
        values = values.tolist()
    else:
        return [f"x{j}" for j in range(width)]
    names = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
    for j, name in enumerate(names):
        if not name.strip():
            raise UserError(f"{path}: {where}[{j}] is empty")
    return names
