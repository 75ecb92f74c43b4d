"""The benchmarks run and validate (their figures live in BENCHMARKS.md, not here)."""
import argparse
import re
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


def test_sparse_files_read_back_and_a_changed_file_is_caught(tmp_path):
    import io

    import numpy as np
    from sklearn.datasets import load_svmlight_file
    sparse_data, bench_sparse = _bench_module("sparse_data"), _bench_module("bench_sparse")
    rows = sparse_data.make_rows(3_000, seed=1)
    train, test = sparse_data.split(rows, 2_000)
    paths = sparse_data.write_files(tmp_path, rows, 2_000)
    assert bench_sparse.check_files(paths, train, test) == []
    # Vowpal Wabbit's text is the same rows: 0-based names, labels -1/1.
    text = open(paths["train.vw"], "rb").read().replace(b" |", b"")
    x, y = load_svmlight_file(io.BytesIO(text), n_features=2 ** 20, zero_based=True)
    assert (x != train.x).nnz == 0 and np.array_equal(y, 2 * train.y - 1)
    lines = open(paths["test.svm"]).read().splitlines(keepends=True)
    lines[7] = lines[7].replace(":1 ", ":2 ", 1)  # one one-hot value of one row
    open(paths["test.svm"], "w").write("".join(lines))
    assert bench_sparse.check_files(paths, train, test) == [
        "test.svm: load_svmlight_file does not give back the rows written"]


def test_sparse_run_checks_name_what_a_tool_missed():
    sparse_data, bench_sparse = _bench_module("sparse_data"), _bench_module("bench_sparse")
    train, test = sparse_data.split(sparse_data.make_rows(1_000, seed=2), 800)
    n, nnz, pos = 800, train.x.nnz, int(train.y.sum())
    majority = max(test.y.mean(), 1 - test.y.mean())
    vw = {"rows": n, "features": nnz + n, "label_sum": 2.0 * pos - n, "test_rows": 200,
          "accuracy": majority + 0.05}
    assert bench_sparse.check_run("vw", vw, train, test) == []
    assert bench_sparse.check_run("vw", dict(vw, features=nnz), train, test) == [
        f"vw: features {nnz} where the training file has {nnz + n}"]
    assert bench_sparse.check_run("sklearn", {"rows": n - 1, "nnz": nnz, "test_rows": 200,
                                              "accuracy": majority}, train, test) == [
        f"sklearn: rows {n - 1} where the training file has {n}",
        f"sklearn: held-out accuracy {majority:.4f} is not above the majority class rate "
        f"{majority:.4f} + 0.02"]


def test_bench_sparse_validates_and_reports():
    """A small run: VW (or the line saying it is not installed), scikit-learn, and mpi_dml
    (or the line saying its CLI refuses the LIBSVM flags)."""
    r = subprocess.run([sys.executable, "benchmarks/bench_sparse.py", "--train-rows", "6000",
                        "--test-rows", "2000", "--repeats", "1", "--batch-size", "256",
                        "--lr", "0.01"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    # tool, read s, train s, total s, rows/s, held-out accuracy, speed over VW's
    rows = dict(re.findall(r"^ *(vw|sklearn|mpi_dml x2) +(?:[\d.]+|-) +(?:[\d.]+|-) +[\d.]+ "
                           r"+[\d,]+ +(0\.\d{4}) +(?:[\d.]+x|-)$", r.stdout, re.M))
    assert "sklearn" in rows, r.stdout
    try:
        import vowpalwabbit  # noqa: F401
        assert "vw" in rows, r.stdout
    except ImportError:
        assert "vw: skipped: vowpalwabbit is not installed" in r.stdout
    assert "mpi_dml x2" in rows, r.stdout
    assert "target:\n  mpi_dml at 2 ranks >= 2.0x vw's rows/s" in r.stdout


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
