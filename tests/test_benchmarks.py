"""The benchmarks run and validate (their figures live in BENCHMARKS.md, not here)."""
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
