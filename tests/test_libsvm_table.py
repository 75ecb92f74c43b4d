"""LIBSVM tables on one rank: values against Python's float and scikit-learn, layout, errors.

    $ .venv/bin/python -m pytest -q tests/test_libsvm_table.py

scikit-learn's ``load_svmlight_file`` is the independent reader every reading is
compared with (same CSR arrays, bit for bit, and the same labels); values are also
checked against ``float()`` of their text. The MPI side is in test_libsvm_mpi.py.
"""
from __future__ import annotations

import math
import tracemalloc

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from mpi_dml.data.formats import libsvm_parse as lp
from mpi_dml.data.formats import open_table, read_csr
from mpi_dml.errors import AgreedError
from mpi_dml.parallel.comm import Comm
from test_csv_numbers import assert_same_bits, halfway_strings, number_strings

sklearn_datasets = pytest.importorskip("sklearn.datasets")
load_svmlight_file = sklearn_datasets.load_svmlight_file
dump_svmlight_file = sklearn_datasets.dump_svmlight_file


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few hundred bytes and windows of a few chunks, so that small files
    cross every chunk and window boundary the large ones do."""
    monkeypatch.setattr(lp, "_CHUNK_MIN", 300)
    monkeypatch.setattr(lp, "_CHUNK_MAX", 700)
    monkeypatch.setattr(lp, "_WINDOW", 2000)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    yield request.param
    numba.set_num_threads(before)


def read_all(comm, path, dtype=np.float64, **options):
    table = open_table(path, comm, **options)
    x, y = read_csr(table, 0, table.n_rows, dtype)
    return table, x, y


def assert_same_csr(x, y, want_x, want_y):
    """The same CSR arrays (data bit for bit) and labels as scikit-learn's reading."""
    assert sp.isspmatrix_csr(x) and x.shape == want_x.shape
    assert x.has_sorted_indices
    np.testing.assert_array_equal(x.indptr, want_x.indptr)
    np.testing.assert_array_equal(x.indices, want_x.indices)
    assert_same_bits(x.data, want_x.data)
    assert_same_bits(y, want_y)


# --- values ---------------------------------------------------------------------------
def finite_strings(rng, n, dtype):
    """Number strings of every kind the parser has a path for, finite in ``dtype``."""
    out = []
    with np.errstate(over="ignore"):
        for s in number_strings(rng, n):
            v = float(s)
            if math.isfinite(v) and np.isfinite(np.dtype(dtype).type(v)):
                out.append(s)
    return out


def svm_text(values, per_line=25, labels=None) -> str:
    lines = []
    for i in range(0, len(values), per_line):
        pairs = " ".join(f"{3 * j + 1}:{v}" for j, v in enumerate(values[i:i + per_line]))
        label = labels[i // per_line] if labels is not None else str(i % 3)
        lines.append(f"{label} {pairs}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_values_match_python_float_and_scikit_learn(comm, tmp_path, dtype, threads, small_chunks):
    rng = np.random.default_rng(20261130)
    strings = finite_strings(rng, 30_000, dtype)
    labels = strings[:len(strings) // 25 + 1]
    path = tmp_path / "values.svm"
    path.write_text(svm_text(strings, labels=labels))
    table, x, y = read_all(comm, path, dtype)
    with np.errstate(over="ignore"):
        assert_same_bits(x.data, np.array([float(s) for s in strings]).astype(dtype))
    assert_same_bits(y, np.array([float(s) for s in labels[:len(y)]]))
    want_x, want_y = load_svmlight_file(str(path), dtype=dtype, zero_based=False,
                                        n_features=table.n_features)
    assert_same_csr(x, y, want_x, want_y)
    assert x.indices.dtype == x.indptr.dtype == np.int32


def test_many_undecided_values_are_settled_by_python_float():
    """Midpoints written with more than 19 digits go to Python's float; more of them
    than one pass records in one chunk makes the chunk parse again."""
    rng = np.random.default_rng(7)
    strings = [s for s in halfway_strings(rng.uniform(1, 2, 600), rng) if len(s) > 25][:300]
    text = np.frombuffer(svm_text(strings, per_line=30, labels=[strings[0]] * 10).encode(),
                         dtype=np.uint8)
    bounds = np.array([0, len(text)])
    counts = lp.count(text, bounds, threads=1)
    data = np.empty(int(counts[0, lp.NNZ]))
    out = lp.parse(text, bounds, counts, zero_based=False, n_features=100, y=np.empty(10),
                   indptr=np.zeros(11, dtype=np.int32), indices=np.empty(len(data), np.int32),
                   data=data, row0=0, k0=0, threads=1)
    assert out[0, lp.CODE] == 0 and out[0, lp.FIXES] > lp._FIXES_PER_CHUNK
    assert_same_bits(data, np.array([float(s) for s in strings]))


@pytest.mark.parametrize("zero_based, dtype", [(False, np.float64), (True, np.float32)])
def test_files_scikit_learn_writes_read_the_same(comm, tmp_path, zero_based, dtype, small_chunks):
    rng = np.random.default_rng(3)
    x = sp.random(300, 3000, density=0.02, format="csr", random_state=4)
    x.data = rng.standard_normal(x.nnz) * 10.0 ** rng.integers(-20, 20, x.nnz)
    y = rng.standard_normal(300).round(3)
    path = tmp_path / "dumped.svmlight"
    dump_svmlight_file(x, y, str(path), zero_based=zero_based, comment="written by sklearn")
    table, got_x, got_y = read_all(comm, path, dtype, zero_based=zero_based, n_features=3000)
    want_x, want_y = load_svmlight_file(str(path), dtype=dtype, zero_based=zero_based,
                                        n_features=3000)
    assert_same_csr(got_x, got_y, want_x, want_y)
    assert table.nnz == x.nnz and table.n_rows == 300


def test_row_ranges_and_blocks(comm, tmp_path, small_chunks):
    rng = np.random.default_rng(5)
    x = sp.random(300, 500, density=0.05, format="csr", random_state=6)
    x.data = rng.standard_normal(x.nnz).round(4)
    path = tmp_path / "ranges.svm"
    dump_svmlight_file(x, rng.integers(0, 4, 300), str(path), zero_based=False)
    want_x, want_y = load_svmlight_file(str(path), zero_based=False, n_features=500)
    table = open_table(path, comm)
    for lo, hi in [(0, 0), (0, 1), (299, 300), (17, 211), (300, 300), (0, 300)]:
        got_x, got_y = read_csr(table, lo, hi)
        assert_same_csr(got_x, got_y, want_x[lo:hi], want_y[lo:hi])
    with pytest.raises(ValueError, match="read as float32 or float64, not int32"):
        read_csr(table, 0, 1, np.int32)
    blocks = list(table.rows(40, 290).blocks(max_bytes=1000, dtype=np.float32))
    assert len(blocks) > 10
    assert [b[0] for b in blocks] == list(np.cumsum([40] + [len(b[1]) for b in blocks[:-1]]))
    assert_same_csr(sp.vstack([b[2] for b in blocks], format="csr"),
                    np.concatenate([b[1] for b in blocks]),
                    want_x[40:290].astype(np.float32), want_y[40:290])


LAYOUT = (b"# a file comment\n"
          b"\n"
          b"+1 2:0.5 7:-3e2   # trailing comment\n"
          b"  -1\t1:1\t3:0\r\n"          # tabs, an explicit zero, CRLF
          b"   \t \n"                     # blanks only
          b"2 5:7#comment right after a value\n"
          b"0\n"                          # a row with no pairs
          b"#\n"
          b"3.5 1:1e-3 2:2 3:3")         # the last line has no newline


def test_comments_blank_lines_and_spacing(comm, tmp_path):
    path = tmp_path / "layout.svm"
    path.write_bytes(LAYOUT)
    table, x, y = read_all(comm, path)
    assert (table.n_rows, table.n_features, table.nnz) == (5, 7, 8)
    np.testing.assert_array_equal(y, [1, -1, 2, 0, 3.5])
    np.testing.assert_array_equal(x.indptr, [0, 2, 4, 5, 5, 8])
    np.testing.assert_array_equal(x.indices, [1, 6, 0, 2, 4, 0, 1, 2])
    np.testing.assert_array_equal(x.data, [0.5, -300, 1, 0, 7, 1e-3, 2, 3])
    assert [table.where(r) for r in range(5)] == [f"{path} line {n}" for n in (3, 4, 6, 7, 9)]
    want_x, want_y = load_svmlight_file(str(path), zero_based=False, n_features=7)
    assert_same_csr(x, y, want_x, want_y)


def test_many_files_are_one_table(comm, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    texts = [b"1 1:1 4:4\n0 2:2\n", b"# only a comment: no rows\n", b"1 9:9\n\n0 3:3 5:5\n",
             b"2 1:0.25\n"]
    for i, text in enumerate(texts):
        (folder / f"part-{i}.svm").write_bytes(text)
    (folder / "_SUCCESS").write_bytes(b"")
    whole = tmp_path / "whole.svm"
    whole.write_bytes(b"".join(texts))
    want_x, want_y = load_svmlight_file(str(whole), zero_based=False)
    for spec in (folder, folder / "part-*.svm"):
        table, x, y = read_all(comm, spec)
        assert table.files == [str(folder / f"part-{i}.svm") for i in range(4)]
        assert table.n_features == 9  # the largest index over every file
        assert_same_csr(x, y, want_x, want_y)
        assert table.where(2) == f"{folder / 'part-2.svm'} line 1"
        assert table.where(3) == f"{folder / 'part-2.svm'} line 3"
        assert table.where(4) == f"{folder / 'part-3.svm'} line 1"
    for i, text in enumerate(texts):  # any name, with the format named
        (folder / f"part-{i}.txt").write_bytes(text)
    table, x, y = read_all(comm, folder / "part-*.txt", fmt="libsvm")
    assert_same_csr(x, y, want_x, want_y)


def test_features_given_zero_based_and_huge(comm, tmp_path):
    path = tmp_path / "z.svm"
    path.write_bytes(b"1 0:1 5:2\n0 3:4\n")
    table, x, _ = read_all(comm, path, zero_based=True)
    assert x.shape == (2, 6) and list(x.indices) == [0, 5, 3]
    table, x, _ = read_all(comm, path, zero_based=True, n_features=100)
    assert x.shape == (2, 100)
    # 2**40 features: memory follows the nonzeros; indices no longer fit int32.
    huge = tmp_path / "huge.svm"
    huge.write_bytes(b"1 3:1 1099511627776:2\n0 2:1\n")
    read_all(comm, huge, np.float32, n_features=2 ** 40)  # compiled outside the trace
    tracemalloc.start()
    table, x, _ = read_all(comm, huge, np.float32, n_features=2 ** 40)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert x.shape == (2, 2 ** 40) and x.indices.dtype == x.indptr.dtype == np.int64
    assert list(x.indices) == [2, 2 ** 40 - 1, 1] and peak < 1 << 20
    table, x, _ = read_all(comm, tmp_path / "z.svm", zero_based=True, n_features=2 ** 31 - 1)
    assert x.indices.dtype == np.int32
    table, x, _ = read_all(comm, tmp_path / "z.svm", np.float32, zero_based=True,
                           n_features=2 ** 31)
    assert x.indices.dtype == np.int64


# --- bad input --------------------------------------------------------------------------
GOOD = b"1 1:0.5 3:1\n# note\n0 2:1\n"
BAD = {
    "value not a number": (GOOD + b"1 3:abc\n", "line 4: in '3:abc' the value is not a number"),
    "index 0 in 1-based": (GOOD + b"1 0:1 3:1\n", "line 4: '0:1' has index 0, but indices are "
                                                   "1-based; pass --zero-based"),
    "decreasing": (b"1 5:1 3:1\n" + GOOD, "line 1: '3:1' follows index 5; indices must be "
                                          "strictly increasing"),
    "repeated": (GOOD + b"0 2:1 2:2\n", "line 4: '2:2' repeats index 2"),
    "label": (GOOD + b"yes 1:1\n", "line 4: the label 'yes' is not a number"),
    "label infinite": (GOOD + b"inf 1:1\n", "line 4: the label 'inf' is not finite"),
    "qid": (b"1 qid:4 1:1\n", "line 1: 'qid:4' is a query id (qid:), which mpi_dml does "
                              "not support"),
    "beyond num_features": (GOOD + b"1 11:1\n", "line 4: '11:1' has index 11, beyond "
                                                "--num-features 10"),
    "nan": (GOOD + b"1 4:nan\n", "line 4: '4:nan' holds a value that is not finite"),
    "overflow": (GOOD + b"1 4:1e309\n", "line 4: '4:1e309' holds a value that is not finite"),
    "too large for float32": (GOOD + b"1 4:1e39\n", "line 4: '4:1e39' holds a value too large "
                                                    "for --dtype float32"),
    # A midpoint of two doubles the fast parser leaves to Python's float; both are
    # beyond float32's range.
    "float32 edge, settled by float()": (GOOD + b"1 4:340282356779733680527005326936723423232\n",
                                         "line 4: '4:34028235677973368052700532693672342"
                                         "3232' holds a value too large"),
    "no colon": (GOOD + b"1 4\n", "line 4: '4' is not an index:value pair"),
    "two colons": (GOOD + b"1 4:1:2\n", "line 4: in '4:1:2' the value is not a number"),
    "empty value": (GOOD + b"1 4: 5:1\n", "line 4: in '4:' the value is not a number"),
    "carriage returns alone": (b"1 1:1\r0 2:1\r", "line 1: the line holds a carriage return"),
    "index of 19 digits": (GOOD + b"1 1234567890123456789:1\n", "has more than 18 digits"),
    "no pairs anywhere": (b"1\n0\n", "has no index:value pairs on any line"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_line_and_token(comm, tmp_path, case):
    text, message = BAD[case]
    path = tmp_path / "bad.svm"
    path.write_bytes(text)
    n_features = 10 if case == "beyond num_features" else None
    with pytest.raises(AgreedError) as info:
        read_all(comm, path, np.float32, n_features=n_features)
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_file_rewritten_between_open_and_read(comm, tmp_path):
    path = tmp_path / "moving.svm"
    path.write_bytes(GOOD)
    table = open_table(path, comm)
    path.write_bytes(GOOD * 2)
    with pytest.raises(AgreedError, match="moving.svm changed while it was being read"):
        read_csr(table, 0, table.n_rows)
