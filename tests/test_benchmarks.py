"""The benchmarks run and validate (their figures live in BENCHMARKS.md, not here)."""
import argparse
import subprocess
import sys

import pytest

from conftest import ROOT, mpi_env, run_mpi

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("n", [2, 3])
def test_bench_allreduce_validates_and_reports(n):
    r = run_mpi(n, ["benchmarks/bench_allreduce.py", "--max-mb", "1", "--repeats", "3",
                    "--budget-mb", "1"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "validation: PASS" in r.stdout
    assert "target: engine >= 0.95 x raw mpi4py" in r.stdout


def test_bench_train_validates_against_torch_and_reports():
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--ranks", "1", "--steps",
                        "2", "--repeats", "1", "--epochs", "2", "--no-profile"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    assert "mpi_dml >= 70% of GEMM roofline at 1 rank" in r.stdout


def test_bench_data_validates_and_reports():
    pytest.importorskip("pandas")
    r = subprocess.run([sys.executable, "benchmarks/bench_data.py", "--rows", "3000", "--cols",
                        "4", "--ranks", "1,2", "--repeats", "1"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    for line in ("csv      1", "parquet      2", "hdf5      1", "predict (CSV, end to end)"):
        assert line in r.stdout, r.stdout


def test_bench_data_validation_catches_a_wrong_reading(tmp_path):
    """One value changed in the Parquet file: the readings no longer match pandas'."""
    pq = pytest.importorskip("pyarrow.parquet")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_data
    finally:
        sys.path.pop(0)
    paths = bench_data.write_data(tmp_path, 500, 3)
    table = pq.read_table(paths["parquet"]).to_pandas()
    table.iloc[123, 1] += 1.0
    table.to_parquet(paths["parquet"], index=False)
    args = argparse.Namespace(timeout=300)
    failures = bench_data.validate(paths, [2], tmp_path, args)
    assert failures == ["parquet at 2 ranks: rows differ from pandas' reading"]


# --- bench_sparse.py: the generated rows, the files, the checks, and one small run ---------
def _bench_module(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_sparse_rows_keep_the_generators_promises():
    import numpy as np
    sparse_data = _bench_module("sparse_data")
    rows = sparse_data.make_rows(20_000, seed=3)
    x, y = rows.x, rows.y
    assert x.shape == (20_000, 2 ** 20) and x.indices.dtype == np.int32
    # 13 numeric fields present with p 0.85, 30 categorical ones with p 0.97.
    per_row = np.diff(x.indptr)
    assert abs(per_row.mean() - (13 * 0.85 + 30 * 0.97)) < 0.1 and per_row.max() <= 43
    within_row = np.diff(x.indices)[np.diff(np.repeat(np.arange(20_000), per_row)) == 0]
    assert (within_row > 0).all() and x.has_sorted_indices
    numeric = x.indices < 13
    assert (x.data[~numeric] == 1).all()
    assert x.data[numeric].min() == 0.693 and x.data[numeric].max() <= 4.174
    # Power law: a few features carry most nonzeros, most are seen once, and the
    # rank-frequency curve falls about as rank**-1.1.
    counts = np.sort(np.bincount(x.indices, minlength=2 ** 20)[13:])[::-1]
    assert counts[:1049].sum() > 0.6 * counts.sum()
    assert (counts == 1).sum() > 30_000
    slope = np.polyfit(np.log(np.arange(101, 1001)), np.log(counts[100:1000]), 1)[0]
    assert -1.3 < slope < -0.9, slope
    draws = np.bincount(sparse_data._zipf_ranks(np.random.default_rng(0), 100_000, 200_000))
    p0 = 1 / np.sum(np.arange(1, 100_001.0) ** -1.1)
    assert abs(draws[0] / 200_000 - p0) < 0.003
    assert abs(np.polyfit(np.log(np.arange(1, 51)), np.log(draws[:50]), 1)[0] + 1.1) < 0.05
    # Balanced classes, drawn from the logistic model of the margin.
    assert 0.47 < y.mean() < 0.53
    for chosen in (slice(None), rows.margin > 2, rows.margin < -2):
        p = 1 / (1 + np.exp(-rows.margin[chosen]))
        assert abs(y[chosen].mean() - p.mean()) < 4 * np.sqrt(p.mean() * (1 - p.mean()) / p.size)
