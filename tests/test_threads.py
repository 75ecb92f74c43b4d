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
