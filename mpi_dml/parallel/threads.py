"""How many threads each rank gives BLAS and Numba.

Ranks that share cores must not each start one thread per core: four ranks with four
BLAS threads each on a four-core node run sixteen threads on four cores and every GEMM
slows down. The count is, in order: ``--threads``; ``SLURM_CPUS_PER_TASK`` (at most the
CPUs this rank may use); otherwise the CPUs this rank may use divided by the number of
ranks on the node allowed exactly the same CPUs (all of them, without binding; one,
when the launcher bound each rank to its own cores).
"""
from __future__ import annotations

import os
import sys


def allowed_cpus() -> tuple:
    """The CPUs this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def threads_per_rank(requested: int, ranks_sharing_cpus: int, *, environ=None,
                     cpus=None) -> int:
    environ = os.environ if environ is None else environ
    cpus = len(allowed_cpus()) if cpus is None else cpus
    if requested > 0:
        return requested
    if environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, min(int(environ["SLURM_CPUS_PER_TASK"]), cpus))
    return max(1, cpus // max(ranks_sharing_cpus, 1))


def apply_threads(n: int) -> dict:
    """Limit BLAS/OpenMP and Numba to ``n`` threads in this process; report what is set.

    Numba's count is thread-local: it holds for the calling thread, the one that then
    runs the kernels (``kernels/cpu.py``). Numba cannot go above the threads it started
    with (``NUMBA_NUM_THREADS``, all cores by default); the report says where it stopped.
    """
    # Numba's OpenMP threads (its threading layer wherever libgomp is found) spin for
    # milliseconds after each kernel by default, on the cores that the next GEMM's BLAS
    # threads need: on 2 shared cores, 1 rank x 2 threads trained 2 to 27 times faster
    # with them asleep at once (BENCHMARKS.md). OpenMP reads it once, when Numba first
    # starts its threads: in set_num_threads below, unless something started them before.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=n)
    numba_threads = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(numba_threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)  # for any library loaded after this point
    # pyarrow (Parquet) sizes its pool from OMP_NUM_THREADS when it loads; one already
    # loaded would decode with a thread per core, on every rank of the node.
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].set_cpu_count(n)
    return {
        "threads_per_rank": n,
        "blas": [{"library": p.get("internal_api"), "threads": p.get("num_threads")}
                 for p in threadpool_info()],
        "numba": {"threads": numba_threads, "started": numba.config.NUMBA_NUM_THREADS,
                  "layer": numba.threading_layer()},
    }
