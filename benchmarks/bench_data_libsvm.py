"""The LIBSVM part of bench_data.py: the file, its workers and its validation.

    $ python benchmarks/bench_data.py --formats libsvm      # 250k rows, 2**20 features

mpi_dml's ``open_table`` + ``read_csr`` (float32 CSR, each rank its ``sharding.chunk``)
against scikit-learn's ``load_svmlight_file`` of the whole file; validated first: the
ranks' rows end to end must be scikit-learn's CSR arrays, values bit for bit, and its
labels.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DRIVER = Path(__file__).resolve().parent / "bench_data.py"


def write_libsvm(path: Path, rows: int, features: int, nnz: int, seed: int = 0) -> str:
    """``rows`` lines of about ``nnz`` sorted 1-based indices below ``features``."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(nnz, rows).clip(1, features)
    # Four significant digits, as normalised features are often written.
    values = [f"{v:.4g}" for v in np.linspace(0.001, 1, 9991)]
    with open(path, "w") as fh:
        for a in range(0, rows, 20_000):
            lines = []
            for k in counts[a:a + 20_000].tolist():
                cols = np.unique(rng.integers(1, features + 1, k)).tolist()
                picks = rng.integers(0, len(values), len(cols)).tolist()
                pairs = " ".join([f"{c}:{values[v]}" for c, v in zip(cols, picks)])
                lines.append(f"{int(rng.integers(0, 2))} {pairs}\n")
            fh.write("".join(lines))
    return str(path)


# --- workers ---------------------------------------------------------------------------
def worker_libsvm(args):
    from bench_data import peak_rss_bytes, rss_bytes
    from mpi_dml.data.formats import open_table, read_csr
    from mpi_dml.data.sharding import chunk
    from mpi_dml.parallel.comm import Comm

    comm = Comm.world()

    def read(path):
        table = open_table(path, comm)
        lo, hi = chunk(table.n_rows, comm.rank, comm.size)
        return read_csr(table, lo, hi, np.float32)

    if args.warm:  # compile the parsers on a small file, outside the clock
        read(args.warm)
    base = rss_bytes()
    comm.barrier()
    t0 = time.perf_counter()
    x, y = read(args.data)
    seconds = time.perf_counter() - t0
    if args.check:
        np.savez(f"{args.check}.{comm.rank}.npz", data=x.data, indices=x.indices,
                 indptr=x.indptr, shape=x.shape, y=y)
    held = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes + y.nbytes
    everyone = comm.allgather({"seconds": seconds, "rows": len(y),
                               "memory": (peak_rss_bytes() - base) / max(held, 1)})
    if comm.is_root:
        print(json.dumps({"seconds": max(r["seconds"] for r in everyone),
                          "rows": [r["rows"] for r in everyone],
                          "memory": max(r["memory"] for r in everyone)}))


def worker_sklearn(args):
    from sklearn.datasets import load_svmlight_file

    t0 = time.perf_counter()
    values = load_svmlight_file(args.data, dtype=np.float32, zero_based=False)
    seconds = time.perf_counter() - t0
    del values
    print(json.dumps({"seconds": seconds}))


# --- validation ------------------------------------------------------------------------
def validate_libsvm(path: str, ranks: list[int], tmp: Path, args) -> list[str]:
    """At every rank count, the ranks' CSR rows end to end are scikit-learn's reading."""
    from sklearn.datasets import load_svmlight_file

    want = load_svmlight_file(path, dtype=np.float32, zero_based=False)
    failures = []
    for p in ranks:
        check = tmp / f"check-libsvm-{p}"
        common.run_ranks(p, [DRIVER, "--worker", "libsvm", "--data", path,
                             "--check", check], timeout=args.timeout)
        parts = []
        for r in range(p):
            with np.load(f"{check}.{r}.npz") as f:
                parts.append({k: f[k] for k in f.files})
            os.unlink(f"{check}.{r}.npz")
        why = csr_difference(parts, *want)
        if why:
            failures.append(f"libsvm at {p} ranks: {why}")
    return failures


def csr_difference(parts: list[dict], x, y) -> str:
    """How the ranks' CSR parts, end to end, differ from ``x`` and labels ``y`` ('' if
    not at all: the same arrays, values bit for bit)."""
    import scipy.sparse as sp

    got = sp.vstack([sp.csr_matrix((q["data"], q["indices"], q["indptr"]),
                                   shape=tuple(q["shape"])) for q in parts], format="csr")
    if got.shape != x.shape:
        return f"shape {got.shape} instead of scikit-learn's {x.shape}"
    for name in ("indptr", "indices"):
        if not np.array_equal(getattr(got, name), getattr(x, name)):
            return f"the CSR {name} differ from scikit-learn's reading"
    if got.data.dtype != x.data.dtype or not np.array_equal(got.data.view(np.uint8),
                                                            x.data.view(np.uint8)):
        return "values differ from scikit-learn's reading"
    if not np.array_equal(np.concatenate([q["y"] for q in parts]), y):
        return "labels differ from scikit-learn's reading"
    return ""
