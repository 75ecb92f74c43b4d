"""mpi_dml: data-parallel training on HPC clusters.

Run one process, or many under an MPI launcher; the code path is the same:

    $ python -m mpi_dml train --config examples/digits.toml
    $ mpiexec -n 4 python -m mpi_dml train --config examples/digits.toml
    $ srun --mpi=pmi2 -n 8 python -m mpi_dml train --config examples/digits.toml

Importing this package does not start MPI; building a ``Comm`` does.
"""
__version__ = "0.1.0"
