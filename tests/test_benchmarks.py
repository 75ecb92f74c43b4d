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
    r = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--ranks", "1", "--steps",
                        "2", "--repeats", "1", "--epochs", "2", "--no-profile"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    assert "mpi_dml >= 70% of GEMM roofline at 1 rank" in r.stdout


def test_bench_data_validates_and_reports():
    pytest.importorskip("pandas")
    r = subprocess.run([sys.executable, "benchmarks/bench_data.py", "--rows", "3000", "--cols",
                        "4", "--ranks", "1,2", "--repeats", "1", "--formats", "csv,parquet,hdf5"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    for line in ("csv      1", "parquet      2", "hdf5      1", "predict (CSV, end to end)"):
        assert line in r.stdout, r.stdout


def test_bench_data_libsvm_validates_against_scikit_learn_and_reports():
    pytest.importorskip("sklearn")
    r = subprocess.run([sys.executable, "benchmarks/bench_data.py", "--formats", "libsvm",
                        "--svm-rows", "2000", "--svm-features", "5000", "--ranks", "2",
                        "--repeats", "1"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    assert "libsvm      2" in r.stdout and "x sklearn  >= 3.0x" in r.stdout, r.stdout
    assert "predict" not in r.stdout.split("validation: PASS")[1]  # predict comes with csv


def test_bench_data_libsvm_validation_catches_a_wrong_reading(tmp_path):
    """One value a float32 step off, or a row's nonzeros shifted: not scikit-learn's."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_data_libsvm
    finally:
        sys.path.pop(0)
    path = bench_data_libsvm.write_libsvm(tmp_path / "t.svm", 50, 300, 5)
    x, y = sklearn_datasets.load_svmlight_file(path, dtype=np.float32, zero_based=False)

    def parts(x, y):  # as two ranks save them
        return [{"data": p.data, "indices": p.indices, "indptr": p.indptr, "shape": p.shape,
                 "y": y[a:b]} for p, (a, b) in ((x[:20], (0, 20)), (x[20:], (20, 50)))]

    assert bench_data_libsvm.csr_difference(parts(x, y), x, y) == ""
    off = x.copy()
    off.data[37] = np.nextafter(off.data[37], np.float32(2))
    assert bench_data_libsvm.csr_difference(parts(off, y), x, y) == \
        "values differ from scikit-learn's reading"
    moved = x.copy()
    moved.indptr[7] += 1
    assert bench_data_libsvm.csr_difference(parts(moved, y), x, y) == \
        "the CSR indptr differ from scikit-learn's reading"
    assert bench_data_libsvm.csr_difference(parts(x, y + 1), x, y) == \
        "labels differ from scikit-learn's reading"


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
