"""``mpi_dml.read_table``: each rank's contiguous rows of a CSV, .npy or .npz file,
against the file's contents read whole by NumPy.

    $ .venv/bin/python -m pytest -q tests/test_read_table.py

In this process (one rank) and under real mpiexec at 1-4 ranks: every rank's
``values`` concatenated in rank order must equal NumPy's reading of the file (the
columns asked for, in that order), ``first_row`` must be where the split puts it
(contiguous, the first ``n % size`` ranks one row more, derived here from n and size),
and ``to_frame()`` must hold the same numbers indexed by global row.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import mpi_dml
from conftest import RANKS, ROOT, run_mpi
from mpi_dml.errors import AgreedError, UserError

SCRIPT = ROOT / "tests" / "mpi_scripts" / "custom_read_table.py"


def expected_first_row(n: int, rank: int, size: int) -> int:
    base, extra = divmod(n, size)
    return rank * base + min(rank, extra)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (path, NumPy's reading as float64, column names)."""
    folder = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(5)
    out = {}

    # CSV: a quoted header name holding a comma, quoted number cells, 103 rows (uneven
    # at 2, 3 and 4 ranks). Written with repr, so parsing gives the same float64 back.
    data = np.column_stack([np.arange(103), rng.normal(size=(103, 2)) * 1e3,
                            rng.integers(0, 3, 103)])
    names = ["id", "x, first", "x2", "label"]
    lines = ['id,"x, first",x2,label']
    for i, row in enumerate(data):
        cells = [repr(float(v)) for v in row]
        if i % 7 == 0:
            cells[2] = f'"{cells[2]}"'
        lines.append(",".join(cells))
    csv = folder / "t.csv"
    csv.write_text("\n".join(lines) + "\n")
    numpy_reading = np.loadtxt(csv, delimiter=",", skiprows=1, quotechar='"')
    assert np.array_equal(numpy_reading, data)
    out["csv"] = (csv, numpy_reading, names)

    tiny = folder / "tiny.csv"  # fewer rows than ranks: some ranks get none
    tiny.write_text("a,b\n1.5,2\n3,4.25\n")
    out["tiny"] = (tiny, np.loadtxt(tiny, delimiter=",", skiprows=1, ndmin=2), ["a", "b"])

    npy = folder / "m.npy"
    np.save(npy, rng.normal(size=(61, 3)).astype(np.float32))
    out["npy"] = (npy, np.load(npy).astype(np.float64), ["0", "1", "2"])

    rec = folder / "rec.npy"
    records = np.zeros(37, dtype=[("a", np.int32), ("b", np.float64)])
    records["a"], records["b"] = np.arange(37) * 3, rng.normal(size=37)
    np.save(rec, records)
    loaded = np.load(rec)
    out["structured"] = (rec, np.column_stack([loaded["a"], loaded["b"]]).astype(float),
                         ["a", "b"])

    X, y = rng.normal(size=(50, 3)), rng.integers(0, 2, 50).astype(float)
    for name, save in (("npz", np.savez), ("npz-compressed", np.savez_compressed)):
        path = folder / f"{name}.npz"
        save(path, X=X, y=y, feature_names=np.array(["f0", "f1", "f2"]))
        with np.load(path) as z:
            out[name] = (path, np.column_stack([z["X"], z["y"]]), ["f0", "f1", "f2", "y"])
    return out


# (file, columns asked for or None)
CASES = [("csv", None), ("csv", ["label", "x, first"]), ("tiny", None), ("npy", None),
         ("npy", ["2", "0"]), ("structured", ["b"]), ("npz", None), ("npz", ["y", "f1"]),
         ("npz-compressed", ["f2", "y"])]


def expected_columns(files, name, columns):
    _, values, names = files[name]
    wanted = names if columns is None else columns
    return values[:, [names.index(c) for c in wanted]], wanted


@pytest.mark.parametrize("name, columns", CASES)
def test_one_rank_reads_the_whole_file(files, name, columns):
    path, _, _ = files[name]
    rows = mpi_dml.read_table(path, columns=columns)
    values, wanted = expected_columns(files, name, columns)
    assert rows.columns == wanted
    assert rows.first_row == 0 and rows.n_rows == len(values) == len(rows)
    assert rows.values.dtype == np.float64
    np.testing.assert_array_equal(rows.values, values)


def test_to_frame_is_indexed_by_global_row(files):
    pd = pytest.importorskip("pandas")
    rows = mpi_dml.read_table(files["csv"][0], columns=["id", "x2"])
    frame = rows.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["id", "x2"]
    assert list(frame.index) == list(range(103))
    np.testing.assert_array_equal(frame["x2"].to_numpy(), files["csv"][1][:, 2])


def test_to_frame_without_pandas_says_what_to_install(files, monkeypatch):
    rows = mpi_dml.read_table(files["tiny"][0])
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        rows.to_frame()


@pytest.mark.parametrize("columns, message", [
    (["nope"], r"t\.csv has no column named 'nope' \(in columns\)\. Columns: id, x, first"),
    ("id", r"The 'columns' parameter of read_table must be a list of column names"),
    ([], r"The 'columns' parameter of read_table must name at least one column"),
    (["id", "id"], r"must name each column once. Got 'id' more than once"),
    ([0], r"must be a list of column names .* Got \[0\] instead"),
])
def test_bad_columns_name_the_parameter_and_the_value(files, columns, message):
    with pytest.raises(AgreedError, match=message):
        mpi_dml.read_table(files["csv"][0], columns=columns)


def test_missing_file_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match=r"No such file: .*absent\.csv"):
        mpi_dml.read_table(tmp_path / "absent.csv")


@pytest.mark.mpi
@pytest.mark.parametrize("n", RANKS)
def test_ranks_read_contiguous_rows_that_make_up_the_file(files, tmp_path, n):
    specs = [str(files[name][0]) + (f"::{'|'.join(cols)}" if cols else "")
             for name, cols in CASES]
    specs.append(f"{files['csv'][0]}::id|missing")
    result = run_mpi(n, [SCRIPT, tmp_path, *specs])
    assert result.returncode == 0, result.stderr
    for i, (name, columns) in enumerate(CASES):
        values, wanted = expected_columns(files, name, columns)
        parts = []
        for rank in range(n):
            got = np.load(tmp_path / f"{i}.rank{rank}.npz")
            assert "error" not in got, str(got["message"])
            assert list(got["columns"]) == wanted
            assert int(got["n_rows"]) == len(values)
            assert int(got["first_row"]) == expected_first_row(len(values), rank, n)
            assert int(got["frame_ok"]) in (1, -1)
            parts.append(got["values"])
        np.testing.assert_array_equal(np.concatenate(parts), values, err_msg=f"{name} at {n}")
    # A column that is not there: the same error, on every rank.
    errors = [np.load(tmp_path / f"{len(CASES)}.rank{rank}.npz") for rank in range(n)]
    assert {str(e["error"]) for e in errors} == {"AgreedError"}
    assert len({str(e["message"]) for e in errors}) == 1
    assert "has no column named 'missing'" in str(errors[0]["message"])
