"""HDF5 tables against h5py's own reading of the same files.

    $ .venv/bin/python -m pytest -q tests/test_formats_hdf5.py

One process (``Comm.world()`` under plain pytest is a world of size 1), so any row
range can be asked for; test_formats_mpi.py reads HDF5 at 1-4 ranks. The layout is
that of ``.npz``: a 2-D ``X``, optional ``feature_names``, and 1-D datasets as columns.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import mpi_dml
from mpi_dml.data import formats
from mpi_dml.data.columns import choose_columns
from mpi_dml.errors import UserError
from mpi_dml.parallel.comm import Comm

N = 45
NAMES = ["height", "width", "depth", "mass"]


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


def write_h5(path, n=N, **extra):
    """X in float32, chunked and compressed so reads cross chunks; y int64, w float64,
    a string id dataset and a group, which are not columns."""
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=rng.normal(size=(n, 4)).astype(np.float32), chunks=(8, 4),
                         compression="gzip")
        f["feature_names"] = np.array(NAMES, dtype=h5py.string_dtype())
        f["y"] = rng.integers(0, 3, n)
        f["w"] = rng.random(n)
        f["ids"] = np.array([f"r{i}" for i in range(n)], dtype=h5py.string_dtype())
        f.create_group("meta").create_dataset("z", data=np.zeros(3))
        for name, value in extra.items():
            f[name] = value
    return path


def reference(path) -> np.ndarray:
    """h5py's reading: X, then w and y (the 1-D datasets in the file's own order, which
    is by name unless the file tracks creation order), as float64."""
    with h5py.File(path, "r") as f:
        return np.column_stack([f["X"][()], f["w"][()], f["y"][()]]).astype(np.float64)


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_h5(tmp_path_factory.mktemp("h5") / "t.h5")


def test_columns_and_values_match_h5py(comm, h5):
    table = formats.open_table(h5, comm)
    assert table.columns == NAMES + ["w", "y"] and table.n_rows == N
    assert table.feature_columns == NAMES
    np.testing.assert_array_equal(table.read(0, N), reference(h5))


@pytest.mark.parametrize("cols", [[0, 1, 2, 3], [3, 4, 1], [5], [2, 0], [4, 5]])
def test_every_row_range(comm, h5, cols):
    table = formats.open_table(h5, comm)
    truth = reference(h5)[:, cols]
    for lo in range(N + 1):
        for hi in range(lo, N + 1, 3):
            np.testing.assert_array_equal(table.read(lo, hi, cols), truth[lo:hi],
                                          err_msg=f"rows [{lo}, {hi})")


@pytest.mark.parametrize("max_cells", [1, 5, 12, 10_000])
def test_blocks_are_bounded_and_in_order(comm, h5, max_cells):
    table = formats.open_table(h5, comm)
    cols = [1, 4, 3]
    got, at = [], 2
    for first, block in table.rows(2, 41, cols).blocks(max_cells=max_cells):
        assert first == at and 1 <= len(block) <= max(1, max_cells // 3)
        got.append(block.copy())  # the next block may reuse its buffer
        at += len(block)
    np.testing.assert_array_equal(np.concatenate(got), reference(h5)[2:41, cols])


@pytest.mark.parametrize("cols, dtype", [
    ([0, 1, 2, 3], np.float32), ([2, 0], np.float32), ([5], np.int64), ([4], np.float64),
    ([0, 5], np.float64),
])
def test_blocks_keep_the_file_number_type(comm, h5, cols, dtype):
    table = formats.open_table(h5, comm)
    assert {b.dtype for _, b in table.rows(0, N, cols).blocks()} == {np.dtype(dtype)}
    if dtype == np.float32:
        got = table.rows(0, N, cols).gather(np.float32)
        with h5py.File(h5, "r") as f:
            np.testing.assert_array_equal(got, f["X"][()][:, cols])


def test_read_table_by_name_and_format_keyword(h5, tmp_path):
    rows = mpi_dml.read_table(h5, columns=["w", "mass", "y"])
    np.testing.assert_array_equal(rows.values, reference(h5)[:, [4, 3, 5]])
    other = shutil.copy(h5, tmp_path / "t.dat")
    rows = mpi_dml.read_table(other, columns=["height"], format="hdf5")
    np.testing.assert_array_equal(rows.values, reference(h5)[:, [0]])


def test_feature_names_as_an_attribute_or_by_default(comm, tmp_path):
    path = tmp_path / "a.hdf5"
    with h5py.File(path, "w") as f:
        f["X"] = np.arange(6.0).reshape(3, 2)
        f["X"].attrs["feature_names"] = ["p", "q"]
        f["label"] = np.array([0, 1, 0])
    assert formats.open_table(path, comm).columns == ["p", "q", "label"]
    with h5py.File(path, "a") as f:
        del f["X"].attrs["feature_names"]
    assert formats.open_table(path, comm).columns == ["x0", "x1", "label"]


def test_features_need_not_be_named_x(comm, tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f["features"] = np.arange(8.0).reshape(4, 2)
        f["y"] = np.arange(4)
    table = formats.open_table(path, comm)
    assert table.columns == ["x0", "x1", "y"]
    np.testing.assert_array_equal(table.read(1, 4), [[2, 3, 1], [4, 5, 2], [6, 7, 3]])


def test_label_is_chosen_by_name_and_other_datasets_are_unused(comm, h5):
    table = formats.open_table(h5, comm)
    features, _, unused = choose_columns(table, "y", ())
    assert [table.columns[i] for i in features] == NAMES and unused == ["w"]
    with pytest.raises(UserError, match=r"t\.h5 has no column named 'target'"):
        choose_columns(table, "target", ())


def h5_with(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value
    return path


@pytest.mark.parametrize("datasets, message", [
    ({"y": np.zeros(4)}, r"should hold one 2-D numeric dataset of features at its top "
                         r"level \(or name it 'X'\); found none"),
    ({"A": np.zeros((4, 2)), "B": np.zeros((4, 3))}, r"found 'A', 'B'"),
    ({"X": np.zeros(4), "y": np.zeros(4)}, r"dataset 'X' should be a 2-D numeric dataset "
                                           r"\(rows, features\), but it is 1-D of float64"),
    ({"X": np.zeros((4, 2, 2))}, r"'X' should be a 2-D numeric dataset .* 3-D of float64"),
    ({"X": np.array([[b"a", b"b"]])}, r"'X' should be a 2-D numeric dataset .* 2-D of \|S1"),
    ({"X": np.zeros((4, 2)), "y": np.zeros(3)}, r"dataset 'y' has 3 rows but 'X' has 4"),
    ({"X": np.zeros((4, 2)), "feature_names": np.array([b"a", b"b", b"c"])},
     r"dataset 'feature_names' should be 1-D with 2 strings, one per column of 'X', but "
     r"it has shape \(3,\)"),
    ({"X": np.zeros((4, 2)), "feature_names": np.array([b"a", b"a"])},
     r"column names must be unique, but 'a' appear"),
])
def test_bad_layouts_are_named(comm, tmp_path, datasets, message):
    path = h5_with(tmp_path / "bad.h5", **datasets)
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*" + message):
        formats.open_table(path, comm)


def test_feature_names_attribute_of_the_wrong_length(comm, tmp_path):
    path = h5_with(tmp_path / "bad.h5", X=np.zeros((4, 2)))
    with h5py.File(path, "a") as f:
        f["X"].attrs["feature_names"] = ["a", "b", "c"]
    with pytest.raises(UserError, match=r"attribute 'feature_names' of 'X' should be 1-D "
                                        r"with 2 strings"):
        formats.open_table(path, comm)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"X,y\n1,2\n", "is not a readable HDF5 file"),
    (lambda raw: raw[: len(raw) // 2], "is not a readable HDF5 file"),
    (lambda raw: raw[:1000], "is not a readable HDF5 file"),
    (lambda raw: b"", "is empty"),
])
def test_unreadable_and_truncated_files(comm, h5, tmp_path, damage, message):
    path = tmp_path / "bad.h5"
    path.write_bytes(damage(h5.read_bytes()))
    with pytest.raises(UserError, match=f"{path} {message}"):
        formats.open_table(path, comm)


def test_a_file_rewritten_after_opening_is_noticed(comm, tmp_path):
    path = write_h5(tmp_path / "t.h5")
    table = formats.open_table(path, comm)
    write_h5(path, n=N - 5)
    with pytest.raises(UserError, match="t.h5 changed while it was being read"):
        table.read(0, 10)
