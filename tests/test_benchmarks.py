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


def test_bench_balance_validates_and_reports():
    r = subprocess.run([sys.executable, "benchmarks/bench_balance.py", "--ranks", "2", "--steps",
                        "4", "--epochs", "2", "--repeats", "1", "--hidden", "8"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    # 1024 rows, batches of 64 on 2 ranks: the balanced plan gives each rank exactly 32
    # rows of every batch; the shuffled plan's slowest rank has more than that on average.
    table = {line.split()[0]: line.split() for line in r.stdout.splitlines()
             if line.split()[:1] in (["balanced"], ["shuffled"])}
    assert table["balanced"][2:4] == ["1.000", "1.000"], r.stdout
    assert float(table["shuffled"][2]) > 1.0, r.stdout
    assert "step time, shuffled over balanced at 2 ranks" in r.stdout
