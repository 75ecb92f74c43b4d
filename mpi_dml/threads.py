"""How many threads each rank gives BLAS and Numba.

Ranks that share a node must not each start one thread per core: four ranks with
four BLAS threads each on a four-core node run sixteen threads on four cores and every
GEMM slows down. The count is, in order: ``--threads``; ``SLURM_CPUS_PER_TASK``; the
CPUs this process is bound to, when the launcher bound it to a subset; otherwise the
node's CPUs divided by the ranks on the node.
"""
from __future__ import annotations

import os


def threads_per_rank(requested: int, local_size: int, *, environ=None, affinity=None,
                     cpu_count=None) -> int:
    environ = os.environ if environ is None else environ
    if requested > 0:
        return requested
    if environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(environ["SLURM_CPUS_PER_TASK"]))
    affinity = len(os.sched_getaffinity(0)) if affinity is None else affinity
    cpu_count = (os.cpu_count() or 1) if cpu_count is None else cpu_count
    if affinity < cpu_count:
        return max(1, affinity)
    return max(1, affinity // max(local_size, 1))


def apply_threads(n: int) -> dict:
    """Limit BLAS/OpenMP and Numba to ``n`` threads in this process; report what is set."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=n)
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)  # for any library loaded after this point
    return {
        "threads_per_rank": n,
        "numba_threads": numba.get_num_threads(),
        "blas": [{"library": p.get("internal_api"), "threads": p.get("num_threads")}
                 for p in threadpool_info()],
    }
