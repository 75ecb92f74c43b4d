"""LIBSVM tables under real mpiexec at 1-4 ranks: each rank's rows, and one agreed error.

    $ .venv/bin/python -m pytest -q tests/test_libsvm_mpi.py
    $ MPI_DML_TEST_RANKS=1,3 .venv/bin/python -m pytest -q tests/test_libsvm_mpi.py

One launch per rank count runs every job (mpi_scripts/libsvm_check.py). Good files must
give each rank exactly its ``sharding.chunk`` of what scikit-learn's
``load_svmlight_file`` reads from the whole data in one process, with ``where`` naming
the right file and line; the files are laid out so that byte ranges fall inside long
lines, between files, and on ranks with no rows. Bad files must stop every rank with
the same message, naming the file, the line and the token, wherever the bad line is.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import RANKS, ROOT, run_mpi

sklearn_datasets = pytest.importorskip("sklearn.datasets")

pytestmark = pytest.mark.mpi

SCRIPT = ROOT / "tests" / "mpi_scripts" / "libsvm_check.py"


def chunk(n, rank, size):
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def random_lines(rng, n, n_features=60, base=1, extra=()):
    """``n`` lines with comments, blank lines and CRLF endings mixed in; ``extra``:
    (line number, text) inserted."""
    lines = []
    for i in range(n):
        k = int(rng.integers(0, 8))
        cols = np.sort(rng.choice(n_features, k, replace=False)) + base
        pairs = " ".join(f"{c}:{v:.6g}" for c, v in zip(cols, rng.standard_normal(k)))
        line = f"{rng.integers(0, 3)} {pairs}".rstrip()
        roll = rng.random()
        if roll < 0.08:
            lines.append("# a comment line")
        elif roll < 0.12:
            lines.append("   ")
        elif roll < 0.16:
            line += "  # with a comment"
        lines.append(line + ("\r" if rng.random() < 0.1 else ""))
    for at, text in extra:
        lines.insert(at, text)
    return ("\n".join(lines) + "\n").encode()


def data_lines(raw: bytes) -> list[int]:
    """1-based numbers of the lines that are rows: not blank, not a comment."""
    return [i + 1 for i, line in enumerate(raw.split(b"\n")[:-1] if raw.endswith(b"\n")
                                          else raw.split(b"\n"))
            if line.strip() and not line.strip().startswith(b"#")]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """(job for the script, what to expect) pairs."""
    tmp = tmp_path_factory.mktemp("libsvm")
    rng = np.random.default_rng(11)
    out = []

    def good(files, *, fmt="auto", zero_based=False, n_features=None, dtype="float64",
             api="read_csr", path=None):
        whole = tmp / f"whole-{len(out)}.svm"
        whole.write_bytes(b"".join(raw for _, raw in files))
        x, y = sklearn_datasets.load_svmlight_file(str(whole), dtype=np.dtype(dtype),
                                                   zero_based=zero_based, n_features=n_features)
        where = [f"{file} line {n}" for file, raw in files for n in data_lines(raw)]
        out.append(({"path": str(path or files[0][0]), "format": fmt, "zero_based": zero_based,
                     "n_features": n_features, "dtype": dtype, "api": api},
                    ("rows", x, y, where)))

    def bad(path, raw, message, *, named=None, **job):
        """``raw`` written to ``path``; the job reads ``named`` (default ``path``)."""
        path.write_bytes(raw)
        out.append(({"path": str(named or path), "format": "auto", "zero_based": False,
                     "n_features": None, "dtype": "float32", "api": "read_csr", **job},
                    ("error", f"{path} {message}")))

    # A line longer than a rank's byte range at 4 ranks, so some ranges start no line.
    long_line = "1 " + " ".join(f"{c}:{c / 7:.5f}" for c in range(1, 3000))
    single = tmp / "single.svm"
    single.write_bytes(random_lines(rng, 200, extra=[(90, long_line)]))
    good([(single, single.read_bytes())])
    good([(single, single.read_bytes())], api="read_table")

    parts = tmp / "parts"  # uneven files, one with no rows, fewer files than ranks in all
    parts.mkdir()
    sizes = [40, 0, 1, 70, 3]
    files = []
    for k, n in enumerate(sizes):
        raw = random_lines(rng, n, n_features=60 + 20 * k) if n else b"# nothing here\n"
        (parts / f"p{k}.svm").write_bytes(raw)
        files.append((parts / f"p{k}.svm", raw))
    good(files, path=parts)

    zero = tmp / "zero.data"  # any name, with --format; 0-based; a feature count given
    zero.write_bytes(random_lines(rng, 50, base=0))
    good([(zero, zero.read_bytes())], fmt="libsvm", zero_based=True, n_features=500,
         dtype="float32")
    tiny = tmp / "tiny.svm"  # more ranks than rows
    tiny.write_bytes(b"1 2:3\n# c\n0 1:1\n")
    good([(tiny, tiny.read_bytes())])

    # The bad line last (read by the last rank) or at the end (scanned by the last
    # rank at open): its line number counts every line of every range before it.
    late = random_lines(rng, 150)
    n = late.count(b"\n")
    bad(tmp / "late_value.svm", late + b"1 3:abc\n",
        f"line {n + 1}: in '3:abc' the value is not a number")
    bad(tmp / "late_index.svm", late + b"1 0:1\n" + random_lines(rng, 3),
        f"line {n + 1}: '0:1' has index 0, but indices are 1-based")
    bad(tmp / "beyond.svm", late + b"1 61:1\n", f"line {n + 1}: '61:1' has index 61, beyond "
                                                f"--num-features 60", n_features=60)
    bad_parts = tmp / "bad_parts"  # the bad line in the middle file of three
    bad_parts.mkdir()
    (bad_parts / "a.svm").write_bytes(random_lines(rng, 30))
    (bad_parts / "c.svm").write_bytes(random_lines(rng, 5))
    bad(bad_parts / "b.svm", random_lines(rng, 4, extra=[(4, "0 7:1 5:2")]),
        "line 5: '5:2' follows index 7", named=bad_parts)
    return out


@pytest.mark.parametrize("n", RANKS)
def test_each_rank_reads_its_rows_and_every_rank_agrees_on_errors(jobs, tmp_path, n):
    (tmp_path / "jobs.json").write_text(json.dumps([job for job, _ in jobs]))
    result = run_mpi(n, [SCRIPT, tmp_path / "jobs.json", tmp_path], timeout=300)
    assert result.returncode == 0, result.stderr
    for i, (job, (kind, *expected)) in enumerate(jobs):
        got = [np.load(tmp_path / f"{i}.rank{r}.npz") for r in range(n)]
        if kind == "error":
            messages = {str(g["message"]) for g in got}
            assert len(messages) == 1, messages  # one message, on every rank
            assert all(str(g["error"]) == "AgreedError" for g in got)
            assert expected[0] in messages.pop()
            continue
        x, y, where = expected
        for r, g in enumerate(got):
            assert "error" not in g, str(g["message"])
            lo, hi = chunk(x.shape[0], r, n)
            assert int(g["first_row"]) == lo and int(g["n_rows"]) == x.shape[0]
            assert tuple(g["shape"]) == (hi - lo, x.shape[1]) and bool(g["sorted"])
            part = x[lo:hi]
            np.testing.assert_array_equal(g["indptr"], part.indptr, err_msg=f"job {i} rank {r}")
            np.testing.assert_array_equal(g["indices"], part.indices)
            assert g["data"].dtype == part.data.dtype
            np.testing.assert_array_equal(g["data"].view(np.uint8), part.data.view(np.uint8))
            np.testing.assert_array_equal(g["y"], y[lo:hi])
            if hi > lo:
                assert list(g["where"]) == [where[lo], where[hi - 1]]
