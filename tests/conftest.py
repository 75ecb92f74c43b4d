"""Shared test helpers: launching real mpiexec jobs and preparing real datasets.

The MPI tests run under whichever MPI family this Python's mpiexec belongs to: the
MPICH wheel (the usual test environment) or the Open MPI wheel (CI's second run, the
tests marked ``smoke``, at 2 ranks where a test takes its rank counts from ``RANKS``):

    $ python -m pytest -q
    $ MPI_DML_TEST_RANKS=2 .venv-openmpi/bin/python -m pytest -q -m smoke
"""
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RANKS_ENV = "MPI_DML_TEST_RANKS"
# Open MPI refuses to start as root without both variables (CI containers run as root).
OPENMPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def ranks_to_test(environ=os.environ) -> tuple:
    """Rank counts for the tests that run at each of them: 1-4, or MPI_DML_TEST_RANKS."""
    text = environ.get(RANKS_ENV, "").strip()
    if not text:
        return (1, 2, 3, 4)
    try:
        ranks = tuple(int(part) for part in text.split(","))
    except ValueError:
        ranks = ()
    if not ranks or min(ranks) < 1:
        raise pytest.UsageError(f"{RANKS_ENV}={text!r} must list rank counts >= 1 separated "
                                f"by commas, e.g. {RANKS_ENV}=2 or {RANKS_ENV}=1,2,3,4.")
    return ranks


RANKS = ranks_to_test()


def _find_mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def mpiexec_path() -> str:
    """The mpiexec that belongs to this Python's mpi4py (the venv's), else PATH's."""
    found = _find_mpiexec()
    if not found:
        pytest.skip("no mpiexec found (pip install mpich)")
    return found


@functools.cache
def mpi_family():
    """'openmpi' or 'mpich' (MPICH and its derivatives): the family of ``mpiexec_path()``,
    whose flags and environment differ; None without an mpiexec."""
    found = _find_mpiexec()
    if not found:
        return None
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60)
    return "openmpi" if "Open MPI" in version.stdout + version.stderr else "mpich"


def mpiexec_cmd(n: int) -> list:
    """``mpiexec -n N`` with what this family needs to run N ranks on any machine."""
    cmd = [mpiexec_path(), "-n", str(n)]
    if mpi_family() == "openmpi":
        # Open MPI starts no more ranks than cores without it; MPICH always does.
        cmd.insert(1, "--oversubscribe")
    return cmd


def mpi_env(extra=None) -> dict:
    env = dict(os.environ)
    # Up to four ranks share two cores here: one thread each, or GEMMs fight.
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    if mpi_family() == "openmpi":
        env.update(OPENMPI_ENV)
    env.update(extra or {})
    return env


def run_mpi(n: int, args, *, timeout=180, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` on ``n`` ranks under real mpiexec; never hangs past ``timeout``."""
    cmd = [*mpiexec_cmd(n), sys.executable, *map(str, args)]
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
    from mpi_dml.data.bundled import prepare
    return prepare("digits", tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def breast_cancer(tmp_path_factory):
    pytest.importorskip("sklearn")
    from mpi_dml.data.bundled import prepare
    return prepare("breast_cancer", tmp_path_factory.mktemp("breast_cancer"))
