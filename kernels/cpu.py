"""Numba versions of every kernel, each fused into one sweep over the batch, on the
rank's threads when the batch is large enough.

    $ python -m pytest -q tests/test_kernels.py tests/test_kernels_threads.py
    $ python benchmarks/bench_kernels.py            # serial against threaded, by size

Same names, signatures and results as ``reference.py``. Each public function is a
thin Python wrapper that checks the activation name, turns Python hyper-parameters
into scalars of the array's dtype, and calls one ``@njit`` kernel. Casting up front
means float32 buffers are updated with float32 arithmetic (twice the SIMD width, and
the same rounding as the NumPy reference), and each kernel compiles once per dtype.
``cache=True`` keeps compiled code on disk so later runs skip the JIT.
``error_model="numpy"`` makes float division follow IEEE rules (inf/nan, as the
NumPy reference does) instead of raising ZeroDivisionError; without it the check
on every division stops LLVM from vectorising loops such as Adam's (about 10x).

Threads. Each kernel's body (``_*_body``, inlined) loops over rows, row chunks or
elements with ``numba.prange``, and is compiled twice: plainly (``prange`` is then
``range``) and with ``parallel=True`` (``*_threaded``), which runs the loop on the
calling thread's Numba threads (``numba.set_num_threads``; ``parallel.threads`` sets
the rank's share of the cores). The wrapper takes the threaded one when the call has at
least ``MIN_PARALLEL_WORK[name]`` elements and the thread has more than one thread
(``cpu_threads.py``): below that, waking the threads costs more than they save
(measured with ``benchmarks/bench_kernels.py``). ``warm_up`` compiles the plain kernels
only: a threaded one compiles the first time a call takes it (about 1 s, once: Numba's
cache keeps it), which the thresholds make rare, and never on a rank with one thread.

Sums over rows (loss sums, correct counts, bias gradients) are taken per chunk of rows,
and the partial sums are added in chunk order afterwards; chunk bounds depend only on
the batch's shape (``_row_chunks``). Everything else is element-wise. So each result is
the same to the bit at any number of threads, threaded or not. The optimisers are in
``cpu_optim.py``.
"""
from __future__ import annotations

import numba
import numpy as np

from .cpu_optim import adam_update, sgd_update  # noqa: F401  (a kernel module has them all)
from .cpu_threads import (MIN_PARALLEL_WORK, _combine, _row_chunks,  # noqa: F401
                          _threaded, numba_threads, threads_from)
from .reference import ACTIVATIONS, check_activation

# Activation names become small ints so one compiled kernel serves all three.
_ACT_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}
_IDENTITY, _RELU, _TANH = (_ACT_CODE[name] for name in ("identity", "relu", "tanh"))

# --- layer kernels ---------------------------------------------------------------
# Each ``_*_body`` is inlined into a plain and a threaded kernel (see the docstring).

@numba.njit(inline="always")
def _bias_act_body(z, b, code):
    n, k = z.shape
    for i in numba.prange(n):
        # The activation branch sits outside the inner loops so each is branch-free.
        if code == _RELU:
            for j in range(k):
                x = z[i, j] + b[j]
                z[i, j] = x if x > 0 else 0
        elif code == _TANH:
            for j in range(k):
                z[i, j] = np.tanh(z[i, j] + b[j])
        else:
            for j in range(k):
                z[i, j] += b[j]


@numba.njit(cache=True, error_model="numpy")
def _bias_act_forward(z, b, code):
    _bias_act_body(z, b, code)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _bias_act_forward_threaded(z, b, code):
    _bias_act_body(z, b, code)


@numba.njit(inline="always")
def _act_backward_body(grad, out, code, bias_grad):
    n, k = grad.shape
    count, size = _row_chunks(n, k)
    partial = np.empty((count, k), dtype=bias_grad.dtype)
    no_sums = np.empty((count, 2))
    for c in numba.prange(count):
        no_sums[c, 0] = no_sums[c, 1] = 0
        acc = partial[c]
        for j in range(k):  # a loop: in a parallel kernel acc[:] = 0 would be a parfor
            acc[j] = 0
        if code == _RELU:
            for i in range(c * size, min(n, (c + 1) * size)):
                for j in range(k):
                    if not out[i, j] > 0:
                        grad[i, j] = 0
                    acc[j] += grad[i, j]
        elif code == _TANH:
            for i in range(c * size, min(n, (c + 1) * size)):
                for j in range(k):
                    o = out[i, j]
                    grad[i, j] *= 1 - o * o
                    acc[j] += grad[i, j]
        else:
            for i in range(c * size, min(n, (c + 1) * size)):
                for j in range(k):
                    acc[j] += grad[i, j]
    _combine(partial, no_sums, bias_grad)


@numba.njit(cache=True, error_model="numpy")
def _act_backward(grad, out, code, bias_grad):
    _act_backward_body(grad, out, code, bias_grad)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _act_backward_threaded(grad, out, code, bias_grad):
    _act_backward_body(grad, out, code, bias_grad)


def bias_act_forward(z, b, activation):
    """In place: ``z[i, j] = act(z[i, j] + b[j])``."""
    check_activation(activation)
    kernel = (_bias_act_forward_threaded if _threaded("bias_act_forward", z.size)
              else _bias_act_forward)
    kernel(z, b, _ACT_CODE[activation])


def act_backward(grad, out, activation, bias_grad):
    """In place: ``grad *= act'(pre-activation)``; ``bias_grad`` = column sums."""
    check_activation(activation)
    kernel = _act_backward_threaded if _threaded("act_backward", grad.size) else _act_backward
    kernel(grad, out, _ACT_CODE[activation], bias_grad)


# --- loss kernels ----------------------------------------------------------------
# Each body writes a chunk's bias-gradient sums to ``partial[c]`` and its (loss sum,
# correct rows) to ``sums[c]``; ``_combine`` adds them up.

@numba.njit(inline="always")
def _softmax_body(logits, labels, bias_grad):
    n, k = logits.shape
    # Validate every label before touching logits: Numba does no bounds checks.
    for i in range(n):
        if labels[i] < 0 or labels[i] >= k:
            raise ValueError("class labels must lie in [0, k)")
    count, size = _row_chunks(n, k)
    partial = np.empty((count, k), dtype=bias_grad.dtype)
    sums = np.empty((count, 2))
    for c in numba.prange(count):
        acc = partial[c]
        for j in range(k):  # a loop: in a parallel kernel acc[:] = 0 would be a parfor
            acc[j] = 0
        loss_sum = 0.0
        correct = 0
        for i in range(c * size, min(n, (c + 1) * size)):
            row = logits[i]
            label = labels[i]
            # Pass 1: first argmax (strict '>' keeps the earliest of tied maxima).
            best = 0
            top = row[0]
            for j in range(1, k):
                if row[j] > top:
                    top = row[j]
                    best = j
            if best == label:
                correct += 1
            # Pass 2: exp of the shifted row, stored in place to save a scratch buffer.
            label_shifted = row[label] - top
            norm = 0.0
            for j in range(k):
                e = np.exp(row[j] - top)
                row[j] = e
                norm += e
            loss_sum += np.log(norm) - label_shifted
            # Pass 3: normalise, subtract the one-hot target, accumulate the bias grad.
            for j in range(k):
                row[j] = row[j] / norm
            row[label] -= 1
            for j in range(k):
                acc[j] += row[j]
        sums[c, 0] = loss_sum
        sums[c, 1] = correct
    return _combine(partial, sums, bias_grad)


@numba.njit(inline="always")
def _logistic_body(z, y, bias_grad):
    n = z.shape[0]
    count, size = _row_chunks(n, 1)
    partial = np.empty((count, 1), dtype=bias_grad.dtype)
    sums = np.empty((count, 2))
    for c in numba.prange(count):
        partial[c, 0] = 0
        loss_sum = 0.0
        correct = 0
        for i in range(c * size, min(n, (c + 1) * size)):
            x = z[i, 0]
            target = y[i]
            if (x > 0) == (target == 1):
                correct += 1
            # exp(-|x|) never overflows; both the loss and the sigmoid are built from it.
            e = np.exp(-abs(x))
            # max(x, 0) - y x is exact for y in {0, 1}; grouping it first avoids
            # cancelling a tiny log1p term against a large |x|.
            loss_sum += np.log1p(e) + ((x if x > 0 else 0) - target * x)
            sigmoid = 1 / (1 + e) if x >= 0 else e / (1 + e)
            z[i, 0] = sigmoid - target
            partial[c, 0] += z[i, 0]
        sums[c, 0] = loss_sum
        sums[c, 1] = correct
    return _combine(partial, sums, bias_grad)


@numba.njit(inline="always")
def _hinge_body(z, y, bias_grad):
    n = z.shape[0]
    count, size = _row_chunks(n, 1)
    partial = np.empty((count, 1), dtype=bias_grad.dtype)
    sums = np.empty((count, 2))
    for c in numba.prange(count):
        partial[c, 0] = 0
        loss_sum = 0.0
        correct = 0
        for i in range(c * size, min(n, (c + 1) * size)):
            x = z[i, 0]
            if (x > 0) == (y[i] == 1):
                correct += 1
            t = 2 * y[i] - 1
            margin = t * x
            if margin < 1:
                loss_sum += 1 - margin
                z[i, 0] = -t
            else:
                z[i, 0] = 0
            partial[c, 0] += z[i, 0]
        sums[c, 0] = loss_sum
        sums[c, 1] = correct
    return _combine(partial, sums, bias_grad)


@numba.njit(inline="always")
def _squared_hinge_body(z, y, bias_grad, one):
    # ``one`` is 1 in z's dtype: a literal 1 would make float32 arithmetic float64 here,
    # and the slack would then round differently from the reference's.
    n = z.shape[0]
    count, size = _row_chunks(n, 1)
    partial = np.empty((count, 1), dtype=bias_grad.dtype)
    sums = np.empty((count, 2))
    for c in numba.prange(count):
        partial[c, 0] = 0
        loss_sum = 0.0
        correct = 0
        for i in range(c * size, min(n, (c + 1) * size)):
            x = z[i, 0]
            if (x > 0) == (y[i] == 1):
                correct += 1
            t = y[i] + y[i] - one
            margin = t * x
            if margin >= one:
                z[i, 0] = 0
            else:  # NaN too: it reaches the loss, as in the reference
                slack = one - margin
                loss_sum += slack * slack
                z[i, 0] = -t * (slack + slack)
            partial[c, 0] += z[i, 0]
        sums[c, 0] = loss_sum
        sums[c, 1] = correct
    return _combine(partial, sums, bias_grad)


@numba.njit(inline="always")
def _squared_body(z, y, bias_grad):
    n, k = z.shape
    count, size = _row_chunks(n, k)
    partial = np.empty((count, k), dtype=bias_grad.dtype)
    sums = np.empty((count, 2))
    for c in numba.prange(count):
        sums[c, 1] = 0
        acc = partial[c]
        for j in range(k):  # a loop: in a parallel kernel acc[:] = 0 would be a parfor
            acc[j] = 0
        loss_sum = 0.0
        for i in range(c * size, min(n, (c + 1) * size)):
            for j in range(k):
                d = z[i, j] - y[i, j]
                z[i, j] = d
                loss_sum += d * d
                acc[j] += d
        sums[c, 0] = loss_sum
    return _combine(partial, sums, bias_grad)[0]


@numba.njit(cache=True, error_model="numpy")
def _softmax_xent(logits, labels, bias_grad):
    return _softmax_body(logits, labels, bias_grad)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _softmax_xent_threaded(logits, labels, bias_grad):
    return _softmax_body(logits, labels, bias_grad)


@numba.njit(cache=True, error_model="numpy")
def _logistic_loss_grad(z, y, bias_grad):
    return _logistic_body(z, y, bias_grad)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _logistic_loss_grad_threaded(z, y, bias_grad):
    return _logistic_body(z, y, bias_grad)


@numba.njit(cache=True, error_model="numpy")
def _hinge_loss_grad(z, y, bias_grad):
    return _hinge_body(z, y, bias_grad)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _hinge_loss_grad_threaded(z, y, bias_grad):
    return _hinge_body(z, y, bias_grad)


@numba.njit(cache=True, error_model="numpy")
def _squared_hinge_loss_grad(z, y, bias_grad, one):
    return _squared_hinge_body(z, y, bias_grad, one)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _squared_hinge_loss_grad_threaded(z, y, bias_grad, one):
    return _squared_hinge_body(z, y, bias_grad, one)


@numba.njit(cache=True, error_model="numpy")
def _squared_loss_grad(z, y, bias_grad):
    return _squared_body(z, y, bias_grad)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _squared_loss_grad_threaded(z, y, bias_grad):
    return _squared_body(z, y, bias_grad)


# Loss name -> (serial kernel, threaded kernel), indexed by ``_threaded``'s answer.
_LOSS_KERNELS = {
    "softmax_xent": (_softmax_xent, _softmax_xent_threaded),
    "logistic_loss_grad": (_logistic_loss_grad, _logistic_loss_grad_threaded),
    "hinge_loss_grad": (_hinge_loss_grad, _hinge_loss_grad_threaded),
    "squared_hinge_loss_grad": (_squared_hinge_loss_grad, _squared_hinge_loss_grad_threaded),
    "squared_loss_grad": (_squared_loss_grad, _squared_loss_grad_threaded),
}


def _loss_kernel(name, z):
    """The compiled kernel of loss ``name`` for logits ``z``: threaded or not."""
    return _LOSS_KERNELS[name][_threaded(name, z.size)]


def _sums(totals, loss_sum, correct, rows):
    """``(loss_sum, correct)`` as Python numbers, or None once they are in ``totals``."""
    if totals is None:
        return float(loss_sum), int(correct)
    totals[0], totals[1], totals[2] = loss_sum, correct, rows
    return None


def softmax_xent(logits, labels, bias_grad, totals=None):
    """In place: ``logits`` becomes ``p - onehot(labels)``. Returns ``(loss_sum, correct)``."""
    loss_sum, correct = _loss_kernel("softmax_xent", logits)(logits, labels, bias_grad)
    return _sums(totals, loss_sum, correct, logits.shape[0])


def logistic_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``sigmoid(z) - y``. Returns ``(loss_sum, correct)``."""
    loss_sum, correct = _loss_kernel("logistic_loss_grad", z)(z, y, bias_grad)
    return _sums(totals, loss_sum, correct, z.shape[0])


def hinge_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``-t`` inside the margin, else 0. Returns ``(loss_sum, correct)``."""
    loss_sum, correct = _loss_kernel("hinge_loss_grad", z)(z, y, bias_grad)
    return _sums(totals, loss_sum, correct, z.shape[0])


def squared_hinge_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``-2 t max(0, 1 - t z)``. Returns ``(loss_sum, correct)``."""
    kernel = _loss_kernel("squared_hinge_loss_grad", z)
    loss_sum, correct = kernel(z, y, bias_grad, z.dtype.type(1))
    return _sums(totals, loss_sum, correct, z.shape[0])


def squared_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``z - y``. Returns ``0.5 * sum((z - y)**2)``."""
    loss_sum = 0.5 * float(_loss_kernel("squared_loss_grad", z)(z, y, bias_grad))
    return loss_sum if totals is None else _sums(totals, loss_sum, 0, z.shape[0])
