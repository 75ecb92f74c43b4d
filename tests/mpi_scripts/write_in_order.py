"""Each rank writes a text of its own length (rank 1 none) with write_in_rank_order.

    mpiexec -n N python tests/mpi_scripts/write_in_order.py OUT
"""
import sys

from mpi_dml.io.predictions import write_in_rank_order
from mpi_dml.parallel.comm import Comm

comm = Comm.world()
text = b"" if comm.rank == 1 else b"".join(b"%d,%d\n" % (comm.rank, i)
                                           for i in range(1000 * (comm.rank + 1)))
write_in_rank_order(sys.argv[1], b"rank,row\n", text, comm)
