"""Shared test helpers: launching real mpiexec jobs and preparing real datasets."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RANKS = (1, 2, 3, 4)


def mpiexec_path() -> str:
    """The mpiexec that belongs to this Python's mpi4py (the venv's), else PATH's."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec found (pip install mpich)")
    return found


def mpi_env(extra=None) -> dict:
    env = dict(os.environ)
    # Up to four ranks share two cores here: one thread each, or GEMMs fight.
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run_mpi(n: int, args, *, timeout=180, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` on ``n`` ranks under real mpiexec; never hangs past ``timeout``."""
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=mpi_env(env), cwd=cwd or ROOT)


def run_cli(n: int, *args, **kw) -> subprocess.CompletedProcess:
    """``mpiexec -n N python -m mpi_dml ARGS`` (n=0: one plain process, no mpiexec)."""
    if n == 0:
        return subprocess.run([sys.executable, "-m", "mpi_dml", *map(str, args)],
                              capture_output=True, text=True, timeout=kw.get("timeout", 180),
                              env=mpi_env(kw.get("env")), cwd=kw.get("cwd") or ROOT)
    return run_mpi(n, ["-m", "mpi_dml", *args], **kw)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Paths of the digits train/test CSVs (real data shipped with scikit-learn)."""
    pytest.importorskip("sklearn")
    from mpi_dml.datasets import prepare
    return prepare("digits", tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def breast_cancer(tmp_path_factory):
    pytest.importorskip("sklearn")
    from mpi_dml.datasets import prepare
    return prepare("breast_cancer", tmp_path_factory.mktemp("breast_cancer"))
