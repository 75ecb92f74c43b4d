"""Threads per rank: pure function of the request, Slurm's word and the CPU binding."""
import pytest

from mpi_dml.parallel.threads import threads_per_rank


@pytest.mark.parametrize("requested,sharing,environ,cpus,expected", [
    (3, 4, {}, 8, 3),                              # --threads wins
    (0, 4, {"SLURM_CPUS_PER_TASK": "2"}, 8, 2),    # Slurm says
    (0, 1, {"SLURM_CPUS_PER_TASK": "6"}, 2, 2),    # ...but never more than we may use
    (0, 4, {}, 8, 2),                              # unbound: split the node
    (0, 1, {}, 2, 2),                              # bound to our own two cores
    (0, 4, {}, 2, 1),                              # oversubscribed: at least one
])
def test_threads_per_rank(requested, sharing, environ, cpus, expected):
    assert threads_per_rank(requested, sharing, environ=environ, cpus=cpus) == expected


def test_pyarrow_loaded_first_gets_the_rank_s_threads():
    """A library user may use pyarrow before mpi_dml sets the threads (its pool is
    sized then): the pool must still take the rank's share (7: no machine's core count
    by chance here)."""
    import subprocess
    import sys

    code = ("import pyarrow as pa\n"
            "pa.cpu_count()\n"
            "from mpi_dml.parallel.threads import apply_threads\n"
            "apply_threads(7)\n"
            "print(pa.cpu_count())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7"
