"""``python -m mpi_dml info``: what this job runs on, printed by rank 0 as JSON.

    $ mpiexec -n 4 python -m mpi_dml info

Use it first on a new cluster: a world size of 1 under ``srun -n 4`` means srun started
four separate jobs (add ``--mpi=pmi2``); ``threads_per_rank`` shows whether ranks on a
node will fight over its cores. ``gpu`` says whether ``--device gpu`` can run, which
GPU each rank would use, and which gradient exchange ``--gpu-exchange auto`` would pick
and why.
"""
from __future__ import annotations

import json
import os
from collections import Counter

from .. import __version__
from ..devices.gpu import gpu_report
from ..parallel.comm import mpi_library
from ..parallel.threads import allowed_cpus, apply_threads, threads_per_rank


def info_command(comm) -> dict:
    threads = apply_threads(threads_per_rank(0, comm.ranks_sharing_cpus))
    gpu, my_gpu = gpu_report(comm)
    mine = {"rank": comm.rank, "host": comm.host, "node": comm.node,
            "local_rank": comm.local_rank, "cpus_bound": len(allowed_cpus()), **my_gpu}
    ranks = comm.allgather(mine)
    report = {
        "mpi_dml": __version__,
        "mpi": mpi_library(),
        "world_size": comm.size,
        "nodes": comm.n_nodes,
        "ranks_per_node": dict(sorted(Counter(r["host"] for r in ranks).items())),
        "threads": threads,
        "slurm_ntasks": os.environ.get("SLURM_NTASKS"),
        "gpu": gpu,
        "ranks": ranks,
    }
    if comm.is_root:
        print(json.dumps(report, indent=2))
    return report
