"""The benchmarks run and validate (their figures live in BENCHMARKS.md, not here)."""
import argparse
import subprocess
import sys

import numpy as np
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
    r = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--section", "torch",
                        "--ranks", "1", "--steps", "2", "--repeats", "1", "--epochs", "2",
                        "--no-profile"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    assert "mpi_dml >= 70% of GEMM roofline at 1 rank" in r.stdout


def test_bench_train_threads_section_validates_and_reports():
    """1 rank x 2 threads against 2 ranks x 1 thread: no torch needed."""
    r = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--section", "threads",
                        "--steps", "2", "--repeats", "1", "--epochs", "2", "--no-profile"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    assert "1x2 >= 0.9x 2x1 samples/s" in r.stdout


def test_bench_train_threads_validation_catches_a_different_model():
    """The layouts' models may differ by float32 rounding, not by a wrong update."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_layouts
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)
    params = rng.standard_normal(1000).astype(np.float32)
    rounded = params * np.float32(1 + 2e-7)  # what another order of the sums gives
    wrong = params.copy()
    wrong[7] += 1e-3 * np.abs(params).max()
    worst, failures = train_layouts.model_differences({"1x2": params, "2x1": rounded})
    assert failures == [] and 0 < worst["2x1"] < train_layouts.VALIDATION_RTOL
    _, failures = train_layouts.model_differences({"1x2": params, "2x1": wrong})
    assert len(failures) == 1 and failures[0].startswith("2x1 against 1x2: largest parameter")


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
