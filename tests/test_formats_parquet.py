"""Parquet tables against pyarrow's and pandas' own reading of the same files.

    $ .venv/bin/python -m pytest -q tests/test_formats_parquet.py

One process (``Comm.world()`` under plain pytest is a world of size 1), so any row
range can be asked for; test_formats_mpi.py reads the same kind of files at 1-4 ranks.
Files have many small row groups, so ranges start and end inside groups and cross them.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")

import mpi_dml
from mpi_dml.data import formats
from mpi_dml.data.columns import choose_columns
from mpi_dml.errors import AgreedError, UserError
from mpi_dml.parallel.comm import Comm

NUMERIC = ["a", "b", "c", "flag", "y"]


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


def frame(n: int, seed: int = 0):
    """Float64, float32, int32, bool and int64 columns, and a string id column."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": pd.Series([f"row-{seed}-{i}" for i in range(n)], dtype="str"),
        "a": rng.normal(size=n) * 1e3,
        "b": rng.normal(size=n).astype(np.float32),
        "c": rng.integers(-50, 50, n).astype(np.int32),
        "flag": rng.random(n) < 0.5,
        "y": rng.integers(0, 3, n).astype(np.int64),
    })


def write(path, df, row_group_size=7):
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path,
                   row_group_size=row_group_size)
    return path


def reference(path, columns) -> np.ndarray:
    """pandas' reading of the file, through pyarrow, as float64."""
    return pd.read_parquet(path, columns=columns).to_numpy(dtype=np.float64)


@pytest.fixture(scope="module")
def one_file(tmp_path_factory):
    path = write(tmp_path_factory.mktemp("pq") / "t.parquet", frame(40))
    assert pq.ParquetFile(path).metadata.num_row_groups == 6  # ranges cross groups
    return path


def test_columns_and_values_match_pyarrow(comm, one_file):
    table = formats.open_table(one_file, comm)
    assert table.columns == ["id", *NUMERIC] and table.n_rows == 40
    cols = [table.columns.index(c) for c in NUMERIC]
    np.testing.assert_array_equal(table.read(0, 40, cols), reference(one_file, NUMERIC))


def test_every_row_range_across_row_groups(comm, one_file):
    table = formats.open_table(one_file, comm)
    cols = [table.columns.index(c) for c in ("y", "b", "a")]
    truth = reference(one_file, ["y", "b", "a"])
    for lo in range(41):
        for hi in range(lo, 41):
            np.testing.assert_array_equal(table.read(lo, hi, cols), truth[lo:hi],
                                          err_msg=f"rows [{lo}, {hi})")


@pytest.mark.parametrize("max_cells", [1, 4, 9, 1000])
def test_blocks_are_bounded_and_in_order(comm, one_file, max_cells):
    table = formats.open_table(one_file, comm)
    cols = [table.columns.index(c) for c in ("a", "c")]
    rows = table.rows(3, 37, cols)
    got, at = [], 3
    for first, block in rows.blocks(max_cells=max_cells):
        assert first == at and 1 <= len(block) <= max(1, max_cells // 2)
        got.append(block.copy())  # the next block may reuse its buffer
        at += len(block)
    np.testing.assert_array_equal(np.concatenate(got), reference(one_file, ["a", "c"])[3:37])


@pytest.mark.parametrize("names, dtype", [
    (["b"], np.float32), (["c"], np.int32), (["flag"], np.bool_),
    (["a", "b"], np.float64), (["b", "y"], np.float64),
])
def test_blocks_keep_the_file_number_type(comm, tmp_path, names, dtype):
    df = frame(30)
    df["b2"] = (df["b"] * 2).astype(np.float32)
    path = write(tmp_path / "t.parquet", df)
    table = formats.open_table(path, comm)
    cols = [table.columns.index(c) for c in names]
    blocks = [block for _, block in table.rows(0, 30, cols).blocks()]
    assert {block.dtype for block in blocks} == {np.dtype(dtype)}
    # float32 columns stay float32 through to the rows gathered in float32.
    if dtype == np.float32:
        got = table.rows(0, 30, cols).gather(np.float32)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, df[names].to_numpy())


def test_float32_pair_stays_float32(comm, tmp_path):
    df = frame(12)
    df["b2"] = (df["b"] * 2).astype(np.float32)
    table = formats.open_table(write(tmp_path / "t.parquet", df), comm)
    cols = [table.columns.index("b2"), table.columns.index("b")]
    blocks = [block.copy() for _, block in table.rows(0, 12, cols).blocks()]
    assert {block.dtype for block in blocks} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(np.concatenate(blocks), df[["b2", "b"]].to_numpy())


def test_read_table_chooses_columns_by_name(one_file):
    rows = mpi_dml.read_table(one_file, columns=["y", "flag", "b"])
    assert rows.columns == ["y", "flag", "b"] and rows.n_rows == 40
    np.testing.assert_array_equal(rows.values, reference(one_file, ["y", "flag", "b"]))


def test_format_keyword_overrides_the_suffix(one_file, tmp_path):
    other = shutil.copy(one_file, tmp_path / "t.bin")
    rows = mpi_dml.read_table(other, columns=["a"], format="parquet")
    np.testing.assert_array_equal(rows.values, reference(one_file, ["a"]))
    with pytest.raises(UserError):  # by its suffix, a .bin file is CSV
        mpi_dml.read_table(other, columns=["a"])


def test_unused_string_column_is_fine_but_a_chosen_one_is_refused(comm, one_file):
    table = formats.open_table(one_file, comm)
    features, label, unused = choose_columns(table, "y", ("a", "b"))
    assert unused == ["id", "c", "flag"]
    table.read(0, 40, features + [label])
    features, label, _ = choose_columns(table, "y", ())  # every column but the label
    with pytest.raises(AgreedError, match=r"t\.parquet: column 'id' holds (large_)?string "
                                          r"values, but feature and label columns must be "
                                          r"numbers or booleans"):
        table.read(0, 40, features + [label])


def test_missing_label_column_is_named(comm, one_file):
    table = formats.open_table(one_file, comm)
    with pytest.raises(UserError, match=r"t\.parquet has no column named 'target'"):
        choose_columns(table, "target", ())


def test_null_names_the_file_row_and_column(comm, tmp_path):
    df = frame(20)
    df["a"] = df["a"].astype(object)
    df.loc[13, "a"] = None
    path = write(tmp_path / "n.parquet", df, row_group_size=5)
    table = formats.open_table(path, comm)
    table.read(0, 13, [table.columns.index("a")])  # rows before the null are fine
    with pytest.raises(AgreedError, match=r"n\.parquet row 13: column 'a' is null"):
        table.read(10, 20, [table.columns.index("a")])


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"id,a\n1,2\n", "is not a readable Parquet file"),
    (lambda raw: raw[: len(raw) // 2], "is not a readable Parquet file"),
    (lambda raw: raw[:-3], "is not a readable Parquet file"),
    (lambda raw: b"", "is empty"),
])
def test_unreadable_and_truncated_files(comm, one_file, tmp_path, damage, message):
    path = tmp_path / "bad.parquet"
    path.write_bytes(damage(one_file.read_bytes()))
    with pytest.raises(UserError, match=f"{path} {message}"):
        formats.open_table(path, comm)


def test_missing_file(comm, tmp_path):
    with pytest.raises(UserError, match=f"No such file: {tmp_path / 'no.parquet'}"):
        formats.open_table(tmp_path / "no.parquet", comm)


# --- many Parquet files ---------------------------------------------------------------
@pytest.fixture
def parts(tmp_path):
    """Three files of 9, 0 and 14 rows, with row groups of 4, 3 and 5 rows."""
    folder = tmp_path / "parts"
    folder.mkdir()
    frames = [frame(9, seed=1), frame(0, seed=2), frame(14, seed=3)]
    for i, (df, size) in enumerate(zip(frames, (4, 3, 5))):
        write(folder / f"part-{i}.parquet", df, row_group_size=size)
    (folder / "_SUCCESS").write_bytes(b"")
    return folder, pd.concat(frames)


@pytest.mark.parametrize("how", ["folder", "glob"])
def test_many_files_are_one_table(comm, parts, how):
    folder, whole = parts
    path = folder if how == "folder" else folder / "part-*.parquet"
    table = formats.open_table(path, comm)
    assert table.n_rows == 23 and table.columns == ["id", *NUMERIC]
    cols = [table.columns.index(c) for c in ("c", "a")]
    truth = whole[["c", "a"]].to_numpy(dtype=np.float64)
    for lo in range(24):
        for hi in range(lo, 24):
            np.testing.assert_array_equal(table.read(lo, hi, cols), truth[lo:hi],
                                          err_msg=f"rows [{lo}, {hi})")
    assert table.where(3) == f"{folder / 'part-0.parquet'} row 3"
    assert table.where(9) == f"{folder / 'part-2.parquet'} row 0"
    assert table.where(22) == f"{folder / 'part-2.parquet'} row 13"


def test_files_with_other_columns_are_refused_naming_both(comm, parts):
    folder, _ = parts
    write(folder / "part-3.parquet", frame(5).drop(columns=["c"]))
    with pytest.raises(AgreedError, match=rf"{folder / 'part-3.parquet'} does not have the "
                                          rf"same columns as {folder / 'part-0.parquet'}: "
                                          r"it lacks 'c'"):
        formats.open_table(folder, comm)


def test_files_with_other_column_types_are_refused_naming_both(comm, parts):
    folder, _ = parts
    df = frame(5)
    df["c"] = df["c"].astype(np.float64)
    write(folder / "part-3.parquet", df)
    with pytest.raises(AgreedError, match=rf"{folder / 'part-3.parquet'} does not have the "
                                          rf"same columns as {folder / 'part-0.parquet'}: "
                                          r"column 'c' holds double there but int32"):
        formats.open_table(folder, comm)


def test_a_damaged_file_among_many_is_named(comm, parts):
    folder, _ = parts
    raw = (folder / "part-2.parquet").read_bytes()
    (folder / "part-2.parquet").write_bytes(raw[:100])
    with pytest.raises(AgreedError, match=f"{folder / 'part-2.parquet'} is not a readable "
                                          "Parquet file"):
        formats.open_table(folder, comm)


def test_a_file_rewritten_after_opening_is_noticed(comm, parts):
    folder, _ = parts
    table = formats.open_table(folder, comm)
    write(folder / "part-2.parquet", frame(14, seed=9), row_group_size=2)
    with pytest.raises(AgreedError, match="part-2.parquet changed while it was being read"):
        table.read(0, 23, [1])
