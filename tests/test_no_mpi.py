"""No MPI library to load (mpi4py installed, libmpi absent): one message, exit status 2.

mpi4py 4 finds libmpi at import time; MPI4PY_LIBMPI naming a file that does not exist
makes that search fail here exactly as it does for a user who removed the `mpich`
wheel and has not loaded the site's MPI module.

    $ python -m pytest -q tests/test_no_mpi.py
"""
import ctypes

import pytest

from conftest import mpi_family, run_cli

pytestmark = pytest.mark.smoke

HOW_TO_GET_ONE = ("pip install 'mpi_dml[mpich]'", "pip install mpich", "module load",
                  "python -m mpi_dml info")


def assert_one_message(result, *names):
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpi_dml: error: "), result.stderr
    for text in (*HOW_TO_GET_ONE, *names):
        assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("command", [["info"], ["train", "--data", "d.csv", "--label-column", "y"],
                                     ["--help"]])
def test_missing_library_says_how_to_get_one(tmp_path, command):
    missing = tmp_path / "libmpi.so.12"
    result = run_cli(0, *command, env={"MPI4PY_LIBMPI": str(missing)})
    assert_one_message(result, f"MPI4PY_LIBMPI={missing}")


def test_library_of_the_chosen_abi_missing(tmp_path):
    """MPI4PY_MPIABI names an MPI family whose libmpi is not installed: the extension
    module itself fails to load (an ImportError, not mpi4py's RuntimeError)."""
    other = {"openmpi": ("mpich", "libmpi.so.12")}.get(mpi_family(), ("openmpi", "libmpi.so.40"))
    try:
        ctypes.CDLL(other[1])
        pytest.skip(f"{other[1]} is installed here")
    except OSError:
        pass
    result = run_cli(0, "info", env={"MPI4PY_MPIABI": other[0]})
    assert_one_message(result, other[1], f"MPI4PY_MPIABI={other[0]}")


def test_only_the_first_task_speaks(tmp_path):
    """Under srun every task fails alike: task 0 says it for all."""
    env = {"MPI4PY_LIBMPI": str(tmp_path / "libmpi.so"), "SLURM_PROCID": "1"}
    result = run_cli(0, "info", env=env)
    assert result.returncode == 2 and result.stderr == "" and result.stdout == ""


@pytest.mark.parametrize("error", [RuntimeError("boom"), ImportError("No module named 'numba'"),
                                   ModuleNotFoundError("No module named 'mpi4py'")])
def test_other_import_failures_are_not_taken_for_a_missing_library(error):
    from mpi_dml.cli import no_mpi_library_message
    assert no_mpi_library_message(error, {}) is None
