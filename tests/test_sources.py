"""Partitioned file readers: every format against NumPy ground truth, and every error.

Most tests run on one rank (``Comm.world()`` under plain pytest is a world of size
1); the tests at the end launch real ``mpiexec`` jobs of 1 to 4 ranks.
"""
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import RANKS, run_mpi

from mpi_dml.data import formats as sources
from mpi_dml.data.formats import csv_table
from mpi_dml.parallel.comm import Comm
from mpi_dml.errors import UserError

SCRIPT = Path(__file__).parent / "mpi_scripts" / "sources_check.py"
NAMES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


def make_data(n_rows=37, n_cols=4, seed=0):
    """Values that stress exact round trips: signs, exponents, integers, NaN and Inf."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n_rows, n_cols)) * 10.0 ** rng.integers(-8, 8, (n_rows, n_cols))
    data[::5, 0] = np.round(data[::5, 0])
    if n_rows > 3 and n_cols > 2:
        data[1, 2], data[2, 1], data[3, 2] = np.nan, np.inf, -np.inf
    return data


def csv_text(data, names, newline="\n", final_newline=True, trailing=""):
    lines = [",".join(names)] + [",".join(repr(float(v)) for v in row) for row in data]
    return newline.join(lines) + (newline if final_newline else "") + trailing


def write_csv(path, data, names=NAMES, **style):
    path.write_bytes(csv_text(data, names, **style).encode())
    return path


def write_all_formats(folder, data):
    """The same table in every supported layout; returns {label: path}."""
    n_cols = data.shape[1]
    folder.mkdir(parents=True, exist_ok=True)
    record = np.empty(len(data), dtype=[(f"f{j}", "<f8") for j in range(n_cols - 1)] + [("t", ">f4")])
    for j in range(n_cols - 1):
        record[f"f{j}"] = data[:, j]
    record["t"] = data[:, -1].astype(np.float32)
    truth = data.copy()
    truth[:, -1] = data[:, -1].astype(np.float32)  # the structured file keeps the target in float32
    paths = {
        "csv": write_csv(folder / "plain.csv", truth, [f"f{j}" for j in range(n_cols - 1)] + ["t"]),
        "csv_crlf": write_csv(folder / "crlf.csv", truth, [f"f{j}" for j in range(n_cols - 1)] + ["t"],
                              newline="\r\n", final_newline=False),
        "npy": folder / "matrix.npy",
        "npy_fortran": folder / "fortran.npy",
        "npy_struct": folder / "record.npy",
        "npz": folder / "stored.npz",
        "npz_compressed": folder / "packed.npz",
        "npz_fortran": folder / "fortran.npz",
        "npz_fortran_compressed": folder / "fortran_packed.npz",
    }
    np.save(paths["npy"], truth)
    np.save(paths["npy_fortran"], np.asfortranarray(truth))
    np.save(paths["npy_struct"], record)
    np.savez(paths["npz"], X=truth[:, :-1], t=truth[:, -1])
    np.savez_compressed(paths["npz_compressed"], X=truth[:, :-1], t=record["t"])
    np.savez(paths["npz_fortran"], X=np.asfortranarray(truth[:, :-1]), t=truth[:, -1])
    np.savez_compressed(paths["npz_fortran_compressed"], X=np.asfortranarray(truth[:, :-1]),
                        t=truth[:, -1])
    np.save(folder / "truth.npy", truth)
    return paths, truth


FORMATS = ["csv", "csv_crlf", "npy", "npy_fortran", "npy_struct", "npz", "npz_compressed", "npz_fortran",
           "npz_fortran_compressed"]


@pytest.fixture(scope="module")
def every_format(tmp_path_factory):
    return write_all_formats(tmp_path_factory.mktemp("formats"), make_data())


# --- same numbers from every format ---------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_ground_truth(comm, every_format, fmt):
    paths, truth = every_format
    table = sources.open_table(paths[fmt], comm)
    assert table.n_rows == truth.shape[0] and len(table.columns) == truth.shape[1]
    got = table.read(0, table.n_rows)
    assert got.dtype == np.float64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, truth)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("lo,hi", [(0, 0), (37, 37), (5, 5), (0, 1), (36, 37), (3, 17), (17, 37), (1, 36)])
def test_any_row_range(comm, every_format, fmt, lo, hi):
    paths, truth = every_format
    got = sources.open_table(paths[fmt], comm).read(lo, hi)
    assert got.shape == (hi - lo, truth.shape[1])
    np.testing.assert_array_equal(got, truth[lo:hi])


@pytest.mark.parametrize("fmt,columns", [
    ("csv", ["f0", "f1", "f2", "t"]),
    ("npy", ["0", "1", "2", "3"]),
    ("npy_struct", ["f0", "f1", "f2", "t"]),
    ("npz", ["x0", "x1", "x2", "t"]),
])
def test_column_names(comm, every_format, fmt, columns):
    assert sources.open_table(every_format[0][fmt], comm).columns == columns


def test_out_of_range_read_is_refused(comm, every_format):
    table = sources.open_table(every_format[0]["csv"], comm)
    with pytest.raises(ValueError, match=r"rank 0 asked for rows \[30, 38\)"):
        table.read(30, 38)


# --- CSV layout variations ------------------------------------------------------------
@pytest.mark.parametrize("style", [
    dict(newline="\r\n"),
    dict(final_newline=False),
    dict(newline="\r\n", final_newline=False),
    dict(trailing="\n\n\n"),
    dict(newline="\r\n", trailing="\r\n\r\n"),
    dict(trailing="  \n\t\n"),
], ids=["crlf", "no-final-newline", "crlf-no-final-newline", "blank-lines", "crlf-blank-lines",
        "whitespace-lines"])
def test_csv_line_endings_and_trailing_blank_lines(comm, tmp_path, style):
    data = make_data()
    table = sources.open_table(write_csv(tmp_path / "d.csv", data, **style), comm)
    assert table.n_rows == len(data)
    np.testing.assert_array_equal(table.read(0, len(data)), data)
    np.testing.assert_array_equal(table.read(36, 37), data[36:])


def test_csv_header_names_are_cleaned(comm, tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b'\xef\xbb\xbf"id", "pixel 1" ,plain,  "z"\r\n1,2,3,4\r\n')
    table = sources.open_table(path, comm)
    assert table.columns == ["id", "pixel 1", "plain", "z"]
    np.testing.assert_array_equal(table.read(0, 1), [[1, 2, 3, 4]])


def test_csv_cells_parse_like_numbers(comm, tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("a,b,c,d\n1, -2.5e3 ,nan,inf\n-inf,7,1e308,-0\n")
    np.testing.assert_array_equal(sources.open_table(path, comm).read(0, 2),
                                  [[1, -2500, np.nan, np.inf], [-np.inf, 7, 1e308, 0]])


def test_csv_header_only_has_no_rows(comm, tmp_path):
    for text in ("a,b\n", "a,b", "a,b\n\n\n"):
        path = tmp_path / "h.csv"
        path.write_text(text)
        table = sources.open_table(path, comm)
        assert table.n_rows == 0 and table.columns == ["a", "b"]
        assert table.read(0, 0).shape == (0, 2)


def test_csv_single_column(comm, tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("y\n1\n2\n3")
    np.testing.assert_array_equal(sources.open_table(path, comm).read(1, 3), [[2], [3]])


def test_csv_tiny_blocks_and_index(comm, tmp_path, monkeypatch):
    """Lines longer than the scan and parse blocks, lookups from sparse checkpoints."""
    monkeypatch.setattr(csv_table, "_SCAN_BLOCK", 5)
    monkeypatch.setattr(csv_table, "_PARSE_BLOCK", 7)
    monkeypatch.setattr(csv_table, "_INDEX_STRIDE", 4)
    data = make_data(n_rows=50)
    table = sources.open_table(write_csv(tmp_path / "t.csv", data, newline="\r\n"), comm)
    assert table.n_rows == 50
    for lo, hi in [(0, 50), (3, 4), (4, 9), (13, 50), (49, 50)]:
        np.testing.assert_array_equal(table.read(lo, hi), data[lo:hi])


# --- CSV errors -----------------------------------------------------------------------
def bad_csv(tmp_path, line, text):
    """A 20-row CSV whose file line ``line`` (header = 1) is replaced by ``text``."""
    lines = csv_text(make_data(n_rows=20), ["id", "pixel_1", "pixel_2", "pixel_3"]).splitlines()
    lines[line - 1] = text
    path = tmp_path / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("line,text,message", [
    (7, "1,2,3,abc", r"data\.csv line 7: column 'pixel_3' holds 'abc', which is not a number"),
    (2, "1,2,3,abc", r"data\.csv line 2: column 'pixel_3' holds 'abc', which is not a number"),
    (21, "x,2,3,4", r"data\.csv line 21: column 'id' holds 'x', which is not a number"),
    (9, "1,,3,4", r"data\.csv line 9: column 'pixel_1' is empty"),
    (9, "1,2,3,", r"data\.csv line 9: column 'pixel_3' is empty"),
    (7, "1,2,3", r"data\.csv line 7: expected 4 comma-separated values \(as in the header\), found 3"),
    (12, "1,2,3,4,5", r"data\.csv line 12: expected 4 comma-separated values \(as in the header\), found 5"),
    (5, "", r"data\.csv line 5: blank line"),
    (5, "1,2,3,4_0", r"data\.csv line 5: column 'pixel_3' holds '4_0', which is not a number"),
])
def test_csv_bad_line_is_named(comm, tmp_path, line, text, message):
    table = sources.open_table(bad_csv(tmp_path, line, text), comm)
    with pytest.raises(UserError, match=message):
        table.read(0, table.n_rows)


def test_csv_bad_line_found_across_parse_pieces(comm, tmp_path, monkeypatch):
    monkeypatch.setattr(csv_table, "_PARSE_BLOCK", 100)
    table = sources.open_table(bad_csv(tmp_path, 17, "1,2,3,oops"), comm)
    table.read(0, 15)  # rows before the bad line read fine
    with pytest.raises(UserError, match=r"line 17: column 'pixel_3' holds 'oops'"):
        table.read(4, 20)


def test_csv_every_row_short_is_caught(comm, tmp_path):
    """Rows that agree with each other but not with the header still fail."""
    path = tmp_path / "short.csv"
    path.write_text("a,b,c\n1,2\n3,4\n")
    with pytest.raises(UserError, match=r"line 2: expected 3 comma-separated values .* found 2"):
        sources.open_table(path, comm).read(0, 2)


@pytest.mark.parametrize("text,message", [
    ("a,,c\n1,2,3\n", r"line 1: column 2 of the header has an empty name"),
    ('a,b,"a"\n1,2,3\n', r"line 1: column names must be unique, but 'a' appear"),
    ("\n1,2\n", r"line 1 should be a header of comma-separated column names, but it is blank"),
])
def test_csv_bad_header(comm, tmp_path, text, message):
    path = tmp_path / "h.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        sources.open_table(path, comm)


# --- file errors, all formats ---------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".txt", ".npy", ".npz"])
def test_missing_file(comm, tmp_path, suffix):
    path = tmp_path / f"nothing{suffix}"
    with pytest.raises(UserError, match=f"No such file: {path}"):
        sources.open_table(path, comm)


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".npz"])
def test_empty_file(comm, tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(UserError, match=f"{path} is empty"):
        sources.open_table(path, comm)


def test_directory(comm, tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        sources.open_table(tmp_path, comm)


# --- .npy -----------------------------------------------------------------------------
def npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b"this is not an npy file at all"), "not a readable .npy file"),
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "not a readable .npy file"),
    (lambda p: np.save(p, np.zeros((2, 3, 4))), "holds a 3-D array"),
    (lambda p: np.save(p, np.zeros(5)), "holds a 1-D array"),
    (lambda p: np.save(p, np.array([["a"]])), "holds a 2-D array of <U1"),
    (lambda p: np.save(p, np.zeros(3, dtype=[("x", "f8"), ("s", "U3")])), "field 's'"),
    (lambda p: p.write_bytes(npz_bytes(X=np.zeros((2, 2)))), "an .npz archive, not an .npy file"),
])
def test_npy_errors(comm, tmp_path, make, message):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(UserError, match=message):
        sources.open_table(path, comm)


def test_npy_integer_and_bool(comm, tmp_path):
    path = tmp_path / "i.npy"
    data = np.arange(12, dtype=">i2").reshape(4, 3)
    np.save(path, data)
    np.testing.assert_array_equal(sources.open_table(path, comm).read(1, 3), data[1:3])
    np.save(path, data > 5)
    np.testing.assert_array_equal(sources.open_table(path, comm).read(0, 4), data > 5)


def test_npy_truncated(comm, tmp_path):
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((100, 3)))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="not a readable .npy file"):
        sources.open_table(path, comm)


# --- .npz -----------------------------------------------------------------------------
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_names_and_targets(comm, tmp_path, save):
    path = tmp_path / "d.npz"
    X = make_data(n_rows=30, n_cols=3)
    y, w = np.arange(30) % 3, np.linspace(0, 1, 30, dtype=np.float32)
    save(path, X=X, y=y, feature_names=np.array(["len", "width", "depth"]), w=w,
         classes=np.array(["cat", "dog", "eel"]), meta=np.float64(3.0))
    table = sources.open_table(path, comm)
    assert table.columns == ["len", "width", "depth", "y", "w"]  # strings and scalars skipped
    expected = np.column_stack([X, y, w])
    np.testing.assert_array_equal(table.read(0, 30), expected)
    np.testing.assert_array_equal(table.read(11, 12), expected[11:12])


def test_npz_feature_array_need_not_be_named_x(comm, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, data=np.eye(3), label=np.array([1, 2, 3]))
    table = sources.open_table(path, comm)
    assert table.columns == ["x0", "x1", "x2", "label"]
    np.testing.assert_array_equal(table.read(1, 3), [[0, 1, 0, 2], [0, 0, 1, 3]])


def test_npz_uncompressed_members_are_memory_mapped(comm, tmp_path):
    path = tmp_path / "d.npz"
    # A long member name and a zip64 extra field make the local header long.
    np.savez(path, X=np.ones((4, 2)), **{"y" * 300: np.arange(4.0)})
    table = sources.open_table(path, comm)
    assert all(m.file_offset is not None for m in table._members)
    np.testing.assert_array_equal(table.read(2, 4)[:, 2], [2, 3])
    np.savez_compressed(path, X=np.ones((4, 2)))
    assert sources.open_table(path, comm)._members[0].file_offset is None


@pytest.mark.parametrize("arrays,message", [
    (dict(X=np.zeros((5, 2)), y=np.zeros(4)), r"'y' has 4 rows but 'X' has 5"),
    (dict(y=np.zeros(4)), r"should hold one 2-D numeric feature array .* found none"),
    (dict(A=np.zeros((5, 2)), B=np.zeros((5, 2))), r"found 'A', 'B'"),
    (dict(X=np.zeros(5)), r"'X' should be a 2-D numeric array"),
    (dict(X=np.zeros((5, 2)), feature_names=np.array(["a"])), r"'feature_names' should be a 1-D array of 2"),
    (dict(X=np.zeros((5, 2)), feature_names=np.array(["y", "b"]), y=np.zeros(5)), r"'y' appear"),
])
def test_npz_errors(comm, tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=message):
        sources.open_table(path, comm)


def test_npz_not_a_zip(comm, tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK but not really a zip file")
    with pytest.raises(UserError, match="not a readable .npz file"):
        sources.open_table(path, comm)


def test_npz_truncated_stored_member(comm, tmp_path):
    path = tmp_path / "cut.npz"
    with zipfile.ZipFile(path, "w") as zf:  # a member whose header promises more data
        with zf.open("X.npy", "w") as out:
            np.lib.format.write_array_header_1_0(
                out, {"descr": "<f8", "fortran_order": False, "shape": (100, 2)})
            out.write(b"\0" * 64)
    with pytest.raises(UserError, match="truncated"):
        sources.open_table(path, comm)


# --- real ranks -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def mpi_datasets(tmp_path_factory):
    """Three tables: many rows, fewer rows than ranks, and no rows at all."""
    root = tmp_path_factory.mktemp("mpi")
    folders = []
    for name, n_rows in [("many", 1000), ("few", 2), ("single", 1)]:
        write_all_formats(root / name, make_data(n_rows=n_rows, n_cols=5, seed=n_rows))
        folders.append(root / name)
    empty = root / "none"
    empty.mkdir()
    (empty / "header_only.csv").write_text("a,b,c\n\n")
    np.save(empty / "empty.npy", np.zeros((0, 3)))
    np.savez(empty / "empty.npz", X=np.zeros((0, 2)), y=np.zeros(0))
    np.save(empty / "truth.npy", np.zeros((0, 3)))
    return folders + [empty]


@pytest.mark.parametrize("n", RANKS)
def test_ranks_read_their_rows(n, mpi_datasets):
    result = run_mpi(n, [SCRIPT, "check", *mpi_datasets], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize("n", RANKS)
def test_bad_cell_in_last_rank_fails_every_rank(n, tmp_path):
    data = make_data(n_rows=1000, n_cols=3)
    lines = csv_text(data, ["a", "b", "c"]).splitlines()
    lines[991] = lines[991].rsplit(",", 1)[0] + ",abc"  # row 990, file line 992
    path = tmp_path / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    result = run_mpi(n, [SCRIPT, "fail", path], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    message = "data.csv line 992: column 'c' holds 'abc', which is not a number"
    assert output.count(message) == 1, output


@pytest.mark.parametrize("n", [1, 4])
def test_missing_file_fails_every_rank(n, tmp_path):
    result = run_mpi(n, [SCRIPT, "fail", tmp_path / "absent.csv"], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert output.count("No such file:") == 1, output


# --- RFC 4180 quoting, line endings, rewrites -------------------------------------------
def test_csv_quoted_numbers_as_exporters_write_them(comm, tmp_path):
    """Excel, R's write.csv and many databases quote every cell: Python's csv module
    writes the same file here, and the numbers must come back unchanged."""
    import csv
    data = make_data(n_rows=20)
    data[~np.isfinite(data)] = 0.5
    path = tmp_path / "quoted.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
        writer.writerow(["id", "size, in cm", 'the "best" guess', "z"])
        writer.writerows([[repr(float(v)) for v in row] for row in data])
    table = sources.open_table(path, comm)
    assert table.columns == ["id", "size, in cm", 'the "best" guess', "z"]
    np.testing.assert_array_equal(table.read(0, 20), data)


def test_csv_header_name_with_a_line_break(comm, tmp_path):
    path = tmp_path / "multi.csv"
    path.write_bytes(b'"first\nname",b\r\n1,2\r\n3,x\r\n')
    table = sources.open_table(path, comm)
    assert table.columns == ["first\nname", "b"] and table.n_rows == 2
    np.testing.assert_array_equal(table.read(0, 1), [[1, 2]])
    # The header takes file lines 1-2, so the second data row is on line 4.
    with pytest.raises(UserError, match=r"multi\.csv line 4: column 'b' holds 'x'"):
        table.read(0, 2)


@pytest.mark.parametrize("text,message", [
    ('a,"b\n1,2\n', r"line 1: the header opens a quote that it never closes"),
    ("a,b\r1,2\r3,4\r", r"ends its lines with a carriage return alone \(classic Mac OS"),
])
def test_csv_header_quote_and_line_end_errors(comm, tmp_path, text, message):
    path = tmp_path / "h.csv"
    path.write_bytes(text.encode())
    with pytest.raises(UserError, match=message):
        sources.open_table(path, comm)


@pytest.mark.parametrize("line,message", [
    ('1,"2",3,"x"', r"line 3: column 'pixel_3' holds 'x', which is not a number"),
    ('1, "2",3,4', r"line 3: column 'pixel_1' holds '\"2\"', which is not a number \(a quoted"),
    ("1,2\r3,4", r"line 3: holds a carriage return inside the line"),
])
def test_csv_quoted_and_carriage_return_cells_are_named(comm, tmp_path, line, message):
    table = sources.open_table(bad_csv(tmp_path, 3, line), comm)
    with pytest.raises(UserError, match=message):
        table.read(0, table.n_rows)


def test_csv_rewrite_of_the_same_size_is_noticed(comm, tmp_path):
    """A file replaced between opening and reading, keeping its size, is refused."""
    import os
    path = write_csv(tmp_path / "d.csv", make_data(n_rows=10))
    table = sources.open_table(path, comm)
    before = os.stat(path)
    path.write_bytes(path.read_bytes().replace(b"e", b"E"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert os.path.getsize(path) == before.st_size
    with pytest.raises(UserError, match="changed while it was being read"):
        table.read(0, 10)


# --- choosing columns ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cols", [[2], [3, 0], [1, 2, 3], [0, 1, 2, 3]])
def test_read_chosen_columns(comm, every_format, fmt, cols):
    paths, truth = every_format
    got = sources.open_table(paths[fmt], comm).read(4, 29, cols)
    assert got.dtype == np.float64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, truth[4:29][:, cols])


def test_npz_features_are_the_columns_of_x(comm, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((4, 2)), y=np.arange(4), row_id=np.arange(4) + 100)
    table = sources.open_table(path, comm)
    assert table.columns == ["x0", "x1", "y", "row_id"]
    assert table.feature_columns == ["x0", "x1"]
    assert sources.open_table(write_csv(tmp_path / "d.csv", np.ones((2, 4))), comm).feature_columns == NAMES


def test_csv_unclosed_quote_in_a_long_header_stops_early(comm, tmp_path, monkeypatch):
    """An unclosed quote must not read a whole file in search of the header's end."""
    monkeypatch.setattr(csv_table, "_MAX_HEADER", 1000)
    path = tmp_path / "big.csv"
    path.write_bytes(b'a,"b\n' + b"1,2\n" * 2000)
    with pytest.raises(UserError, match=r"line 1: the header is longer than .* never closes"):
        sources.open_table(path, comm)
