"""Many files as one table (a folder or a glob), the format of a path, and ``--format``.

    $ .venv/bin/python -m pytest -q tests/test_multi_file.py

One process (``Comm.world()`` under plain pytest is a world of size 1), so any row range
can be asked for. The expected rows are pandas' or NumPy's reading of each file on its
own, concatenated in sorted name order. test_formats_mpi.py runs folders at 1-4 ranks.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import mpi_dml
from mpi_dml.cli import build_parser
from mpi_dml.cli.train import train_config
from mpi_dml.config import TrainConfig
from mpi_dml.data import formats
from mpi_dml.data.formats.files import FORMAT_CHOICES, expand
from mpi_dml.errors import AgreedError, UserError
from mpi_dml.parallel.comm import Comm

pd = pytest.importorskip("pandas")
h5py = pytest.importorskip("h5py")


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


def values(n, seed):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(size=(n, 2)) * 100, rng.integers(0, 2, n)])


def write_csv(path, data, names=("a", "b", "label")):
    lines = [",".join(names)] + [",".join(repr(float(v)) for v in row) for row in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_npz(path, data):
    np.savez(path, X=data[:, :2], y=data[:, 2], feature_names=np.array(["a", "b"]))
    return path


def write_h5(path, data):
    with h5py.File(path, "w") as f:
        f["X"] = data[:, :2]
        f["feature_names"] = np.array([b"a", b"b"])
        f["y"] = data[:, 2]
    return path


WRITERS = {"csv": write_csv, "npy": lambda p, d: np.save(p, d) or p, "npz": write_npz,
           "h5": write_h5}
SIZES = (6, 0, 9, 1)  # a file with no rows among them (an .npy of shape (0, 3))


@pytest.fixture(params=list(WRITERS))
def folder(request, tmp_path):
    """Four files of one format in a folder, named so that sorted order is not the order
    of the numbers in them; and the rows they hold, in that sorted order."""
    suffix = request.param
    folder = tmp_path / "data"
    folder.mkdir()
    names = ["part-10", "part-2", "part-3", "part-33"]
    data = {}
    for i, (name, n) in enumerate(zip(names, SIZES)):
        if suffix != "csv" or n:
            data[name] = values(n, seed=i)
            WRITERS[suffix](folder / f"{name}.{suffix}", data[name])
        else:  # a CSV with a header and no rows
            data[name] = np.empty((0, 3))
            (folder / f"{name}.csv").write_text("a,b,label\n")
    (folder / "_SUCCESS").write_text("")  # markers and hidden files are not data
    (folder / f"_part-1.{suffix}").write_text("x")
    (folder / f".part-0.{suffix}").write_text("x")
    (folder / "nested").mkdir()
    WRITERS[suffix](folder / "nested" / f"part-9.{suffix}", values(3, seed=9))
    truth = np.concatenate([data[name] for name in sorted(data)])
    return folder, suffix, truth, [folder / f"{name}.{suffix}" for name in sorted(data)]


@pytest.mark.parametrize("how", ["folder", "glob"])
def test_files_in_sorted_order_make_one_table(comm, folder, how):
    path, suffix, truth, _ = folder
    if how == "glob":
        path = path / f"part-*.{suffix}"
    table = formats.open_table(path, comm)
    assert table.n_rows == len(truth) == 16
    assert len(table.columns) == 3 and table.path == str(path)
    for lo in range(17):
        for hi in range(lo, 17):
            np.testing.assert_array_equal(table.read(lo, hi), truth[lo:hi],
                                          err_msg=f"rows [{lo}, {hi})")
    for cols in ([2, 0], [1]):
        np.testing.assert_array_equal(table.read(2, 14, cols), truth[2:14, cols])


def test_where_names_the_file_and_its_own_line(comm, folder):
    path, suffix, _, files = folder
    table = formats.open_table(path, comm)
    # Sorted: part-10 (6 rows), part-2 (none), part-3 (9), part-33 (1).
    first, third, last = files[0], files[2], files[3]
    if suffix == "csv":
        assert table.where(0) == f"{first} line 2"
        assert table.where(6) == f"{third} line 2"
        assert table.where(15) == f"{last} line 2"
    else:
        assert table.where(5) == f"{first} row 5"
        assert table.where(8) == f"{third} row 2"


def test_blocks_never_cross_a_file_and_stay_bounded(comm, folder):
    path, suffix, truth, _ = folder
    table = formats.open_table(path, comm)
    got, at, firsts = [], 1, set()
    for first, block in table.rows(1, 16, [0, 2]).blocks(max_cells=8):
        assert first == at and len(block) >= 1
        assert len(block) <= 4
        got.append(block.copy())  # the next block may reuse its buffer
        firsts.add(first)
        at += len(block)
    assert {6, 15} <= firsts  # the first rows of the third and fourth files
    np.testing.assert_array_equal(np.concatenate(got), truth[1:16, [0, 2]])


def test_csv_folder_matches_pandas(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    for i, n in enumerate((5, 8)):
        write_csv(folder / f"p{i}.csv", values(n, seed=i))
    whole = pd.concat([pd.read_csv(folder / f"p{i}.csv") for i in range(2)])
    rows = mpi_dml.read_table(folder, columns=["label", "a"])
    np.testing.assert_array_equal(rows.values, whole[["label", "a"]].to_numpy())


def test_a_bad_cell_in_a_later_file_names_that_file_and_line(comm, tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    write_csv(folder / "p0.csv", values(5, 0))
    bad = write_csv(folder / "p1.csv", values(5, 1))
    lines = bad.read_text().splitlines()
    lines[3] = "1.5,oops,0"
    bad.write_text("\n".join(lines) + "\n")
    table = formats.open_table(folder, comm)
    with pytest.raises(AgreedError, match=f"{bad} line 4: column 'b' holds 'oops'"):
        table.read(0, 10)


@pytest.mark.parametrize("suffix, damage, message", [
    ("csv", lambda raw: raw[:-9], r"line 6: expected 3 comma-separated values"),
    ("csv", lambda raw: b"\x1f\x8b\x08\x00\xff\xfe" * 8, r"line 1: the header is not UTF-8"),
    ("npy", lambda raw: raw[:-20], r" is not a readable \.npy file"),
    ("npy", lambda raw: b"garbage" * 20, r" is not a readable \.npy file"),
    ("npz", lambda raw: raw[:-30], r" is not a readable \.npz file"),
    ("npz", lambda raw: b"garbage" * 20, r" is not a readable \.npz file"),
    ("h5", lambda raw: raw[: len(raw) // 2], r" is not a readable HDF5 file"),
    ("h5", lambda raw: b"garbage" * 20, r" is not a readable HDF5 file"),
])
def test_a_damaged_file_among_many_is_named(comm, tmp_path, suffix, damage, message):
    folder = tmp_path / "d"
    folder.mkdir()
    WRITERS[suffix](folder / f"p0.{suffix}", values(5, 0))
    bad = WRITERS[suffix](folder / f"p1.{suffix}", values(5, 1))
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(AgreedError, match=f"{bad}:? ?{message}"):
        formats.open_table(folder / f"p*.{suffix}", comm).read(0, 10)


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_files_with_other_columns_are_refused_naming_both(comm, tmp_path, suffix):
    folder = tmp_path / "d"
    folder.mkdir()
    first = WRITERS[suffix](folder / f"p0.{suffix}", values(5, 0))
    data = np.column_stack([values(5, 1), np.ones(5)])  # one column more
    other = folder / f"p1.{suffix}"
    if suffix == "csv":
        write_csv(other, data, ("a", "b", "label", "extra"))
        what = "it has 'extra', which"
    elif suffix == "npy":
        np.save(other, data)
        what = "it has '3', which"
    elif suffix == "npz":
        np.savez(other, X=data[:, :2], y=data[:, 2], w=data[:, 3],
                 feature_names=np.array(["a", "c"]))
        what = "it lacks 'b'; it has 'c', 'w', which"
    else:
        with h5py.File(other, "w") as f:
            f["X"], f["y"] = data[:, :3], data[:, 3]
        what = "it lacks 'a', 'b'; it has 'x0', 'x1', 'x2', which"
    with pytest.raises(AgreedError, match=f"{other} does not have the same columns as "
                                          f"{first}: {what} {first} does not"):
        formats.open_table(folder, comm)


def test_columns_in_another_order_are_refused(comm, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_csv(folder / "p0.csv", values(3, 0))
    write_csv(folder / "p1.csv", values(3, 1), ("b", "a", "label"))
    with pytest.raises(AgreedError, match="p1.csv does not have the same columns as .*p0.csv: "
                                          "its columns come in another order"):
        formats.open_table(folder, comm)


def test_a_glob_that_matches_nothing_names_the_pattern(comm, tmp_path):
    pattern = tmp_path / "part-*.csv"
    with pytest.raises(AgreedError, match=re.escape(f"{pattern} matches no files")):
        formats.open_table(pattern, comm)


def test_an_empty_folder(comm, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(AgreedError, match=f"{tmp_path} is a directory with no data files"):
        formats.open_table(tmp_path, comm)


def test_a_folder_of_two_formats_needs_a_choice(comm, tmp_path):
    write_csv(tmp_path / "a.csv", values(4, 0))
    write_npz(tmp_path / "b.npz", values(3, 1))
    with pytest.raises(AgreedError, match=f"{tmp_path} holds files of more than one format "
                                          r"\(1 csv, 1 npz\); choose one with --format"):
        formats.open_table(tmp_path, comm)
    table = formats.open_table(tmp_path, comm, "npz")  # the .npz files alone
    np.testing.assert_array_equal(table.read(0, 3), values(3, 1))
    with pytest.raises(AgreedError, match=r"is a directory with no parquet files in it"):
        formats.open_table(tmp_path, comm, "parquet")


def test_a_glob_over_two_formats_needs_a_choice(comm, tmp_path):
    write_csv(tmp_path / "a.csv", values(4, 0))
    write_npz(tmp_path / "b.npz", values(3, 1))
    with pytest.raises(AgreedError, match=r"matches files of more than one format: .*a\.csv "
                                          r"\(csv\) and .*b\.npz \(npz\)"):
        formats.open_table(tmp_path / "*", comm)


def test_format_overrides_suffixes_of_a_glob(comm, tmp_path):
    for i in range(2):
        write_csv(tmp_path / f"p{i}.txt", values(3, i))
    (tmp_path / "p2.npz").write_bytes(b"")  # not matched by the pattern
    rows = mpi_dml.read_table(tmp_path / "p*.txt", format="csv")
    np.testing.assert_array_equal(rows.values, np.concatenate([values(3, 0), values(3, 1)]))


def test_one_match_is_read_as_that_file(comm, tmp_path):
    path = write_csv(tmp_path / "only.csv", values(4, 0))
    table = formats.open_table(tmp_path / "o*.csv", comm)
    assert table.path == str(path) and table.where(0) == f"{path} line 2"


def test_a_file_name_with_glob_characters_is_a_file(comm, tmp_path):
    path = write_csv(tmp_path / "run[1].csv", values(4, 0))
    np.testing.assert_array_equal(formats.open_table(path, comm).read(0, 4), values(4, 0))


def test_unknown_format_is_refused(comm, tmp_path):
    path = write_csv(tmp_path / "a.csv", values(4, 0))
    with pytest.raises(AgreedError, match="The data format must be one of auto, csv, npy, "
                                          "npz, parquet, hdf5, libsvm. Got 'xml' instead"):
        formats.open_table(path, comm, "xml")
    assert formats.open_table(path, comm, "auto").n_rows == 4


@pytest.mark.parametrize("name, fmt", [
    ("d.csv", "csv"), ("d.npy", "npy"), ("d.NPZ", "npz"), ("d.parquet", "parquet"),
    ("d.h5", "hdf5"), ("d.hdf5", "hdf5"), ("d.txt", "csv"), ("d", "csv"),
])
def test_format_of_a_single_path_comes_from_its_suffix(tmp_path, name, fmt):
    assert expand(str(tmp_path / name), None) == (None, fmt)
    assert expand(str(tmp_path / name), "npy") == (None, "npy")


# --- --format in the config and on the command line ----------------------------------
def test_format_setting_is_validated():
    assert FORMAT_CHOICES == ("auto", "csv", "npy", "npz", "parquet", "hdf5", "libsvm")
    assert TrainConfig().format == "auto"
    TrainConfig(format="parquet").validate(files=False)
    with pytest.raises(UserError, match="The 'format' parameter of TrainConfig must be one "
                                        "of auto, csv, npy, npz, parquet, hdf5, libsvm. Got 'xls'"):
        TrainConfig(format="xls").validate(files=False)


def test_format_flag_of_every_command():
    parser = build_parser()
    train = parser.parse_args(["train", "--data", "d", "--label-column", "y", "--out", "o",
                               "--format", "hdf5"])
    assert train_config(train)[0].format == "hdf5"
    for command, extra in (("evaluate", []), ("predict", ["--output", "p.csv"])):
        args = parser.parse_args([command, "--model", "m", "--data", "d", *extra,
                                  "--format", "parquet"])
        assert args.format == "parquet"
        assert parser.parse_args([command, "--model", "m", "--data", "d", *extra]).format == "auto"
