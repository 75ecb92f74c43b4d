"""A library does not decide for the program that imports it: importing mpi_dml and
using its API change no process-wide state until ``mpi_dml.setup_process()``.

    $ .venv/bin/python -m pytest -q tests/test_library_etiquette.py

Each check runs in a fresh process (one plain process, and two ranks under mpiexec),
started without the thread variables that the other MPI tests set, so that a change
to them shows. The script (``mpi_scripts/custom_etiquette.py``) records the state at
each stage; the expectations here are the Python and kernel defaults it starts with.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT, mpi_env, mpiexec_cmd

SCRIPT = ROOT / "tests" / "mpi_scripts" / "custom_etiquette.py"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")
SIGTERM_BIT = 1 << (15 - 1)  # SigCgt: bit n-1 set when signal n is caught


def clean_env() -> dict:
    env = mpi_env()
    for name in THREAD_VARIABLES:
        env.pop(name, None)
    return env


def launch(n: int, *args, timeout=120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, SCRIPT, *map(str, args)]
    if n:
        cmd = [*mpiexec_cmd(n), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=clean_env(), cwd=ROOT)


def test_import_mpi_dml_loads_no_mpi_numpy_or_sklearn():
    code = ("import sys, mpi_dml\n"
            "heavy = ('mpi4py', 'numpy', 'sklearn', 'numba', 'scipy', 'pandas')\n"
            "print([m for m in heavy if m in sys.modules])\n"
            "mpi_dml.setup_process, mpi_dml.train, mpi_dml.read_table\n"
            "print([m for m in ('mpi4py',) if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=clean_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    on_import, on_lookup = map(json.loads, result.stdout.replace("'", '"').splitlines())
    assert on_import == []
    assert on_lookup == []  # looking a name up does not start MPI either


@pytest.mark.mpi
@pytest.mark.parametrize("n", [0, 2], ids=["plain-process", "mpiexec-2"])
def test_the_api_changes_nothing_until_setup_process(tmp_path, n):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(5)))
    result = launch(n, tmp_path / "state", csv)
    assert result.returncode == 0, result.stderr
    for rank in range(max(n, 1)):
        r = json.loads((tmp_path / f"state.rank{rank}.json").read_text())
        assert r["imported"] == []
        start, before = r["after_import"], r["before"]
        assert not any(v in start["environ"] for v in THREAD_VARIABLES)
        assert start["excepthook"] == "excepthook"  # sys.__excepthook__
        assert start["signals"] == {"SIGTERM": "SIG_DFL", "SIGUSR1": "SIG_DFL",
                                    "SIGINT": "default_int_handler", "SIGHUP": "SIG_DFL"}
        # A fit and a read_table: nothing moves, during the fit or after it. Without
        # the program's threadpoolctl, the environment is compared whole.
        assert before["modules"] == [] and "blas_threads" not in before
        for stage in ("inside", "after"):
            assert r[stage] == before, stage
        assert r["inside_blas"] == r["after_blas"] == r["before_blas"]
        assert r["before_blas"]["blas_threads"]  # BLAS seen, so its count is compared
        # setup_process: threads, variables and the hook; signal handlers for each fit.
        set_up = r["set_up"]
        assert set_up["numba_threads"] == 1 and set_up["blas_threads"] == [1]
        assert all(set_up["environ"][v] == "1" for v in THREAD_VARIABLES[:3])
        assert set_up["excepthook"] != "excepthook"
        assert set_up["signals"] == before["signals"]
        inside = r["inside_owned"]
        assert inside["signals"]["SIGTERM"] != "SIG_DFL"
        assert inside["signals"]["SIGUSR1"] != "SIG_DFL"
        assert int(inside["caught"], 16) & SIGTERM_BIT
        after = r["after_owned"]
        assert after["signals"] == before["signals"]
        assert not int(after["caught"], 16) & SIGTERM_BIT
        assert {r[s]["numpy_errors"] == before["numpy_errors"] for s in
                ("inside", "after", "set_up", "inside_owned", "after_owned")} == {True}


@pytest.mark.mpi
def test_after_setup_process_one_rank_raising_ends_the_job():
    started = time.monotonic()
    result = launch(2, "--raise-on", 1, timeout=60)
    assert result.returncode != 0
    assert "rank 1 on" in result.stderr and "a bug on one rank" in result.stderr
    assert time.monotonic() - started < 30
