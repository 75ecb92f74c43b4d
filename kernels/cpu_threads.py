"""The thread machinery of the cpu kernels (``cpu.py``, ``cpu_optim.py``): when a call
runs on the thread pool, and the fixed row chunks that keep sums the same at any
thread count.

    $ python -m pytest -q tests/test_kernels_threads.py
"""
from __future__ import annotations

import contextlib

import numba

try:
    # The calling thread's Numba thread count, as parfors read it. ``numba.get_num_threads``
    # reads the same through a ctypes pointer, which stops ``cache=True``; from Python
    # it costs 2 us, as much as a small kernel.
    from numba.np.ufunc.parallel import _iget_num_threads
except ImportError:  # a Numba that moved it: the same answer, not cached
    _iget_num_threads = numba.get_num_threads
# The intrinsic calls a symbol that Numba defines when it starts its threading layer;
# code loaded from the cache before that would call a null address.
numba.get_num_threads()

# Row chunks of the kernels that sum over rows: at least 16 rows (adding a chunk's
# partial bias gradient costs a pass over its k values), at least 2048 elements (a chunk
# must outweigh the cost of handing it out), at most 64 chunks (more threads than that
# find no work; the partials stay a small array).
_MIN_CHUNK_ROWS = 16
_CHUNK_ELEMENTS = 2048
_MAX_CHUNKS = 64

# Elements (rows x columns; parameters for the optimisers) from which a kernel runs on
# the thread pool, measured as training runs the kernels: right after a GEMM on the
# rank's BLAS threads (benchmarks/bench_kernels.py at 2 threads, 2-core VM, 2026-11-30;
# BENCHMARKS.md). OpenBLAS's idle threads spin for about 0.1 s after each GEMM, on the
# cores the kernel's threads need, so most kernels found no size up to 2^22 at which 2
# threads beat one there (1 << 23 below: never, in practice); the branchy hinge loss
# did from 2^13-2^14, softmax from 2^21-2^22. Timed alone, with no GEMM before them,
# they pay from 2^13 to 2^21. Re-measure on the nodes that train: the figures depend on
# the cores, the BLAS and how its idle threads wait.
MIN_PARALLEL_WORK = {
    "bias_act_forward": 1 << 23,
    "act_backward": 1 << 23,
    "softmax_xent": 1 << 22,
    "logistic_loss_grad": 1 << 23,
    "hinge_loss_grad": 1 << 14,
    # The hinge's branch and loop, one product more: timed beside the hinge in one run,
    # both paid from 2^15 (2026-11-30, this VM at load 4.5), so it takes the hinge's figure.
    "squared_hinge_loss_grad": 1 << 14,
    "squared_loss_grad": 1 << 23,
    "sgd_update": 1 << 23,
    "adam_update": 1 << 23,
}


@numba.njit(cache=True)
def numba_threads():
    """The calling thread's Numba thread count (what ``numba.get_num_threads`` says)."""
    return _iget_num_threads()


def _threaded(name, work):
    """Whether kernel ``name`` should run ``work`` elements on the thread pool."""
    return work >= MIN_PARALLEL_WORK[name] and numba_threads() > 1


@contextlib.contextmanager
def threads_from(work):
    """Inside, every kernel takes the thread pool from ``work`` elements on (0: always,
    None: never), whatever ``MIN_PARALLEL_WORK`` says; for tests and benchmarks.
    The thresholds are module-wide: nothing may call a kernel from another thread then."""
    saved = dict(MIN_PARALLEL_WORK)
    MIN_PARALLEL_WORK.update(dict.fromkeys(saved, 1 << 62 if work is None else work))
    try:
        yield
    finally:
        MIN_PARALLEL_WORK.update(saved)


@numba.njit
def _row_chunks(n, k):
    """(number of chunks, rows per chunk) for ``n`` rows of ``k`` values."""
    if n == 0:
        return 0, 1
    size = max(_MIN_CHUNK_ROWS, (_CHUNK_ELEMENTS + k - 1) // max(k, 1),
               (n + _MAX_CHUNKS - 1) // _MAX_CHUNKS)
    return (n + size - 1) // size, size


@numba.njit(error_model="numpy")
def _combine(partial, sums, bias_grad):
    """Add the chunks' partial sums in chunk order (the same bits every time): bias
    gradients from ``partial``, (loss, correct rows) from ``sums``; returns the latter."""
    for j in range(bias_grad.shape[0]):
        bias_grad[j] = 0
    loss_sum = 0.0
    correct = 0.0
    for c in range(partial.shape[0]):
        for j in range(bias_grad.shape[0]):
            bias_grad[j] += partial[c, j]
        loss_sum += sums[c, 0]
        correct += sums[c, 1]
    return loss_sum, int(correct)


