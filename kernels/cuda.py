"""Numba CUDA versions of every kernel, for arrays that live on the GPU.

Same names, signatures and results as ``reference.py``. Arguments are device arrays:
CuPy arrays on a GPU (Numba takes anything with ``__cuda_array_interface__``), or
plain NumPy arrays under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

* Element-wise passes (bias + activation, optimiser updates) are one grid-stride
  launch each, whatever the size; an optimiser step is one launch over the whole flat
  buffer. Grids are capped at ``_MAX_BLOCKS`` blocks, about what fills a large GPU.
* Column sums (bias gradients) are two passes: 2-D tiles of rows x columns reduce in
  shared memory to per-tile partials, then one thread per column adds its partials in
  a fixed order. The activation derivative is applied in the first pass, so
  ``act_backward`` reads the gradient once.
* Losses write dLoss/dz in place and leave one (loss, correct) partial per block; the
  host adds those after one copy, the only synchronisation of a loss call. Given
  ``totals``, one thread adds them on the device instead and nothing is read: training
  reads them with the rest of its step summary, once a step.
* Every reduction adds in an order fixed by the shapes alone, never by atomics
  (which would need a zeroed buffer first and finish in any order), so the same
  inputs give the same bits on every run.
* Python hyper-parameters are cast to the array's dtype, so float32 buffers get
  float32 arithmetic; sums are accumulated in float64, as the reference does.

Kernels compile lazily, once per argument types (so once per dtype), on first call,
and ``cache=True`` keeps the result on disk for later runs; ``warm_up("cuda", dtype)``
compiles before timing starts. All launches go to Numba's default stream, in order,
which is what makes reusing one scratch buffer safe.
"""
import math

import numpy as np
from numba import cuda
from numba.core import config as numba_config

from .reference import ACTIVATIONS, check_activation

_ACT_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}
_IDENTITY, _RELU, _TANH = (_ACT_CODE[name] for name in ("identity", "relu", "tanh"))

_MAX_THREADS = 256    # threads per block; block reductions assume a power of two
_MAX_BLOCKS = 1024    # grid-stride loops cover anything larger
_SMALL_K = 32         # softmax: up to this many classes a thread owns a row
_ROW_THREADS = 128    # above it, a block of at most this many threads does
_ROWS_PER_THREAD = 4  # rows each column-sum thread adds before the block reduction


# --- launch configuration and scratch memory ----------------------------------------

def _pow2(n, low, high):
    """The smallest power of two >= ``n``, clamped to [low, high]."""
    return min(high, max(low, 1 << (max(n, 1) - 1).bit_length()))


def _launch(size):
    """(blocks, threads) for a grid-stride pass over ``size`` items."""
    threads = _pow2(size, 32, _MAX_THREADS)
    return max(1, min(_MAX_BLOCKS, -(-size // threads))), threads


def _column_layout(n, k):
    """(grid, block) of the first column-sum pass over an (n, k) array.

    A block is ``cols`` adjacent columns (so a warp reads contiguous memory) by
    ``lanes`` rows; blocks along y take further stripes of rows.
    """
    cols = _pow2(k, 1, 32)
    lanes = _pow2(-(-n // _ROWS_PER_THREAD), 1, _MAX_THREADS // cols)
    tiles = -(-k // cols)
    chunks = max(1, min(-(-n // (lanes * _ROWS_PER_THREAD)), _MAX_BLOCKS // tiles))
    return (tiles, chunks), (cols, lanes)


def _configure(kernel, grid, block):
    """``kernel[grid, block]`` without Numba's low-occupancy warning.

    Numba warns (NumbaPerformanceWarning) whenever a grid has fewer than 128 blocks.
    Grids here are sized to the work, so a small batch, a narrow layer or the one block
    that counts labels is small by design, and the warning would come at every such
    launch. It is issued while the launch is configured, so it is switched off for
    that moment alone: the program's own kernels still get it.
    """
    saved = numba_config.CUDA_LOW_OCCUPANCY_WARNINGS
    numba_config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    try:
        return kernel[grid, block]
    finally:
        numba_config.CUDA_LOW_OCCUPANCY_WARNINGS = saved


_SCRATCH = {}


def _scratch(size):
    """A float64 device buffer of at least ``size`` elements, kept between calls.

    Safe to reuse because every launch goes to the same stream: a later kernel
    cannot start before an earlier one has finished with the buffer.
    """
    key = getattr(cuda.current_context().device, "id", 0)  # the simulator's has no id
    buf = _SCRATCH.get(key)
    if buf is None or buf.size < size:
        buf = _SCRATCH[key] = cuda.device_array(max(size, 1024), np.float64)
    return buf


# --- device helpers ----------------------------------------------------------------

@cuda.jit(device=True)
def _shrink(p, shrink, zero):
    """``sign(p) * max(|p| - shrink, 0)``, as ``_shrink`` in cpu.py; NaN stays NaN."""
    a = abs(p) - shrink
    if a > zero:
        return math.copysign(a, p)
    if a != a:
        return a
    return math.copysign(zero, p)


# --- layer kernels ------------------------------------------------------------------

@cuda.jit(cache=True)
def _bias_act_forward(z, b, code):
    n, k = z.shape
    zero = z.dtype.type(0)
    for e in range(cuda.grid(1), n * k, cuda.gridsize(1)):
        i = e // k
        j = e - i * k
        x = z[i, j] + b[j]
        if code == _RELU:
            x = x if x > zero else zero
        elif code == _TANH:
            x = math.tanh(x)
        z[i, j] = x


@cuda.jit(cache=True)
def _column_partials(a, out, code, partials):
    """Pass 1 of the column sums of ``a``, after ``a *= act'(out)`` for relu/tanh.

    Block (bx, by) leaves its columns' sums over its stripe of rows in
    ``partials[by * k + j]``.
    """
    n, k = a.shape
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    cols, lanes = cuda.blockDim.x, cuda.blockDim.y
    j = cuda.blockIdx.x * cols + tx
    one, zero = a.dtype.type(1), a.dtype.type(0)
    acc = np.float64(0.0)
    if j < k:
        for i in range(cuda.blockIdx.y * lanes + ty, n, cuda.gridDim.y * lanes):
            g = a[i, j]
            if code == _RELU:
                if not out[i, j] > zero:
                    g = zero
                    a[i, j] = g
            elif code == _TANH:
                o = out[i, j]
                g = g * (one - o * o)
                a[i, j] = g
            acc += g
    tile = cuda.shared.array(_MAX_THREADS, np.float64)
    tile[ty * cols + tx] = acc
    cuda.syncthreads()
    step = lanes // 2
    while step > 0:
        if ty < step:
            tile[ty * cols + tx] += tile[(ty + step) * cols + tx]
        cuda.syncthreads()
        step //= 2
    if ty == 0 and j < k:
        partials[cuda.blockIdx.y * k + j] = tile[tx]


@cuda.jit(cache=True)
def _column_finish(partials, chunks, total):
    """Pass 2: ``total[j]`` = the sum of column j's ``chunks`` partials, in order."""
    k = total.shape[0]
    for j in range(cuda.grid(1), k, cuda.gridsize(1)):
        acc = np.float64(0.0)
        for r in range(chunks):
            acc += partials[r * k + j]
        total[j] = acc


def _column_sums(a, out, code, total, partials):
    """``total`` = column sums of ``a`` (after the activation derivative for ``code``);
    ``partials`` is scratch of at least chunks * k elements."""
    grid, block = _column_layout(*a.shape)
    _configure(_column_partials, grid, block)(a, out, code, partials)
    _configure(_column_finish, *_launch(a.shape[1]))(partials, grid[1], total)


def _column_scratch(n, k):
    return _column_layout(n, k)[0][1] * k


def bias_act_forward(z, b, activation):
    """In place: ``z[i, j] = act(z[i, j] + b[j])``."""
    check_activation(activation)
    _configure(_bias_act_forward, *_launch(z.size))(z, b, _ACT_CODE[activation])


def act_backward(grad, out, activation, bias_grad):
    """In place: ``grad *= act'(pre-activation)``; ``bias_grad`` = column sums."""
    check_activation(activation)
    n, k = grad.shape
    _column_sums(grad, out, _ACT_CODE[activation], bias_grad, _scratch(_column_scratch(n, k)))


# --- loss kernels -------------------------------------------------------------------
# A loss call's scratch: [0] bad-label count, then one loss partial per block of the
# row kernel, then one correct-count partial per block, then the column-sum partials.

@cuda.jit(device=True)
def _store_loss_partials(loss, correct, scratch):
    """Block totals of ``loss`` and ``correct`` into this block's two partials."""
    tid = cuda.threadIdx.x
    losses = cuda.shared.array(_MAX_THREADS, np.float64)
    hits = cuda.shared.array(_MAX_THREADS, np.float64)
    losses[tid] = loss
    hits[tid] = correct
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            losses[tid] += losses[tid + step]
            hits[tid] += hits[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        scratch[1 + cuda.blockIdx.x] = losses[0]
        scratch[1 + cuda.gridDim.x + cuda.blockIdx.x] = hits[0]


@cuda.jit(cache=True)
def _count_bad_labels(labels, k, scratch):
    """One block: scratch[0] = how many labels lie outside [0, k)."""
    tid = cuda.threadIdx.x
    bad = cuda.shared.array(_MAX_THREADS, np.int64)
    bad[tid] = 0
    for i in range(tid, labels.shape[0], cuda.blockDim.x):
        if labels[i] < 0 or labels[i] >= k:
            bad[tid] += 1
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            bad[tid] += bad[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        scratch[0] = bad[0]


@cuda.jit(cache=True)
def _softmax_thread_rows(logits, labels, scratch):
    """Few classes: one thread per row (grid-stride), so a warp reads adjacent rows."""
    if scratch[0] != 0:  # a bad label: leave logits untouched, the host raises
        return
    n, k = logits.shape
    one = logits.dtype.type(1)
    loss = np.float64(0.0)
    correct = np.float64(0.0)
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        label = labels[i]
        # First argmax: strict '>' keeps the earliest of tied maxima, as np.argmax.
        arg, top = 0, logits[i, 0]
        for j in range(1, k):
            if logits[i, j] > top:
                arg, top = j, logits[i, j]
        if arg == label:
            correct += 1
        label_shifted = logits[i, label] - top  # read before the row is overwritten
        # Shifting by the row max keeps exp() from overflowing; the loss is unchanged.
        norm = np.float64(0.0)
        for j in range(k):
            e = math.exp(logits[i, j] - top)
            logits[i, j] = e
            norm += e
        loss += math.log(norm) - label_shifted
        norm_t = logits.dtype.type(norm)
        for j in range(k):
            p = logits[i, j] / norm_t
            logits[i, j] = p - one if j == label else p
    _store_loss_partials(loss, correct, scratch)


@cuda.jit(cache=True)
def _softmax_block_rows(logits, labels, scratch):
    """Many classes: one block per row (grid-stride over rows), reductions in shared
    memory. Same steps as ``_softmax_thread_rows``."""
    if scratch[0] != 0:
        return
    n, k = logits.shape
    tid, width = cuda.threadIdx.x, cuda.blockDim.x
    one = logits.dtype.type(1)
    top_val = cuda.shared.array(_ROW_THREADS, np.float64)
    top_idx = cuda.shared.array(_ROW_THREADS, np.int64)
    total = cuda.shared.array(_ROW_THREADS, np.float64)
    loss = np.float64(0.0)
    correct = np.float64(0.0)
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        label = labels[i]
        x_label = logits[i, label]  # read before the row is overwritten below
        # First argmax: ties go to the lower column.
        best, arg = -np.inf, k
        for j in range(tid, k, width):
            v = logits[i, j]
            if v > best or (v == best and j < arg):
                best, arg = v, j
        top_val[tid] = best
        top_idx[tid] = arg
        cuda.syncthreads()
        step = width // 2
        while step > 0:
            if tid < step:
                other, other_arg = top_val[tid + step], top_idx[tid + step]
                if other > top_val[tid] or (other == top_val[tid] and other_arg < top_idx[tid]):
                    top_val[tid] = other
                    top_idx[tid] = other_arg
            cuda.syncthreads()
            step //= 2
        top = logits.dtype.type(top_val[0])  # exact: it was a logits value
        # Each thread keeps to its own columns, so writing in place needs no barrier.
        norm = np.float64(0.0)
        for j in range(tid, k, width):
            e = math.exp(logits[i, j] - top)
            logits[i, j] = e
            norm += e
        total[tid] = norm
        cuda.syncthreads()
        step = width // 2
        while step > 0:
            if tid < step:
                total[tid] += total[tid + step]
            cuda.syncthreads()
            step //= 2
        norm_t = logits.dtype.type(total[0])
        for j in range(tid, k, width):
            p = logits[i, j] / norm_t
            logits[i, j] = p - one if j == label else p
        if tid == 0:
            loss += math.log(total[0]) - (x_label - top)
            if top_idx[0] == label:
                correct += 1
    if tid == 0:
        blocks = cuda.gridDim.x
        scratch[1 + cuda.blockIdx.x] = loss
        scratch[1 + blocks + cuda.blockIdx.x] = correct


@cuda.jit(cache=True)
def _logistic_rows(z, y, scratch):
    one, zero = z.dtype.type(1), z.dtype.type(0)
    loss = np.float64(0.0)
    correct = np.float64(0.0)
    for i in range(cuda.grid(1), z.shape[0], cuda.gridsize(1)):
        x, t = z[i, 0], y[i]
        if (x > zero) == (t == one):
            correct += 1
        # exp(-|x|) never overflows; both the loss and the sigmoid are built from it.
        e = math.exp(-abs(x))
        loss += math.log1p(e) + ((x if x > zero else zero) - t * x)
        sigmoid = one / (one + e) if x >= zero else e / (one + e)
        z[i, 0] = sigmoid - t
    _store_loss_partials(loss, correct, scratch)


@cuda.jit(cache=True)
def _hinge_rows(z, y, scratch):
    one, zero = z.dtype.type(1), z.dtype.type(0)
    loss = np.float64(0.0)
    correct = np.float64(0.0)
    for i in range(cuda.grid(1), z.shape[0], cuda.gridsize(1)):
        x = z[i, 0]
        if (x > zero) == (y[i] == one):
            correct += 1
        t = y[i] + y[i] - one
        margin = t * x
        if margin < one:
            loss += one - margin
            z[i, 0] = -t
        else:
            z[i, 0] = zero
    _store_loss_partials(loss, correct, scratch)


@cuda.jit(cache=True)
def _squared_hinge_rows(z, y, scratch):
    one, zero = z.dtype.type(1), z.dtype.type(0)
    loss = np.float64(0.0)
    correct = np.float64(0.0)
    for i in range(cuda.grid(1), z.shape[0], cuda.gridsize(1)):
        x = z[i, 0]
        if (x > zero) == (y[i] == one):
            correct += 1
        t = y[i] + y[i] - one
        margin = t * x
        if margin >= one:
            z[i, 0] = zero
        else:  # NaN too: it reaches the loss, as in the reference
            slack = one - margin
            loss += slack * slack
            z[i, 0] = -t * (slack + slack)
    _store_loss_partials(loss, correct, scratch)


@cuda.jit(cache=True)
def _squared_rows(z, y, scratch):
    n, k = z.shape
    loss = np.float64(0.0)
    for e in range(cuda.grid(1), n * k, cuda.gridsize(1)):
        i = e // k
        j = e - i * k
        d = z[i, j] - y[i, j]
        z[i, j] = d
        loss += d * d
    _store_loss_partials(loss, np.float64(0.0), scratch)


@cuda.jit(cache=True)
def _finish_totals(scratch, blocks, rows, check_labels, loss_scale, totals, bias_grad):
    """One thread: ``totals`` = [loss sum, correct rows, rows] from the row kernel's
    partials, added in block order. A bad label (counted in scratch[0]) makes the loss
    and the bias gradient NaN: nothing reads the device here to raise, and the step's
    non-finite check then stops on it, naming the rank."""
    if cuda.grid(1) != 0:
        return
    loss = np.float64(0.0)
    correct = np.float64(0.0)
    for b in range(blocks):
        loss += scratch[1 + b]
        correct += scratch[1 + blocks + b]
    if check_labels and scratch[0] != 0:
        loss = np.float64(math.nan)
        for j in range(bias_grad.shape[0]):
            bias_grad[j] = math.nan
    totals[0] = loss * loss_scale
    totals[1] = correct
    totals[2] = rows


def _loss_scratch(n, k, blocks):
    """(scratch, its column-sum part) for a loss over (n, k) with ``blocks`` row blocks."""
    scratch = _scratch(1 + 2 * blocks + _column_scratch(n, k))
    return scratch, scratch[1 + 2 * blocks:]


def _loss_totals(scratch, blocks):
    """(bad labels, loss sum, correct count): the call's one device-to-host copy."""
    host = scratch[:1 + 2 * blocks].copy_to_host()
    return host[0], float(host[1:1 + blocks].sum()), int(host[1 + blocks:].sum())


def _keep_totals(scratch, blocks, rows, totals, bias_grad, check_labels=False, loss_scale=1.0):
    _configure(_finish_totals, 1, 1)(scratch, blocks, rows, check_labels,
                                     np.float64(loss_scale), totals, bias_grad)


def softmax_xent(logits, labels, bias_grad, totals=None):
    """In place: ``logits`` becomes ``p - onehot(labels)``. Returns ``(loss_sum, correct)``,
    or with ``totals`` (float64, 3 elements, on the device) writes [loss_sum, correct,
    rows] there and reads nothing back.

    Labels are checked on the device first; with one outside [0, k) nothing is
    written and ValueError is raised (with ``totals``: the loss and ``bias_grad`` are
    NaN instead, see ``_finish_totals``).
    """
    n, k = logits.shape
    if k <= _SMALL_K:
        kernel, (blocks, threads) = _softmax_thread_rows, _launch(n)
    else:  # a block per row, each thread taking about four of its columns
        kernel = _softmax_block_rows
        blocks, threads = min(max(n, 1), _MAX_BLOCKS), _pow2(-(-k // 4), 32, _ROW_THREADS)
    scratch, cols = _loss_scratch(n, k, blocks)
    _configure(_count_bad_labels, 1, _pow2(n, 32, _MAX_THREADS))(labels, k, scratch)
    _configure(kernel, blocks, threads)(logits, labels, scratch)
    if totals is not None:
        _column_sums(logits, logits, _IDENTITY, bias_grad, cols)
        _keep_totals(scratch, blocks, n, totals, bias_grad, check_labels=True)
        return None
    bad, loss_sum, correct = _loss_totals(scratch, blocks)
    if bad:
        raise ValueError(f"class labels must lie in [0, {k})")
    _column_sums(logits, logits, _IDENTITY, bias_grad, cols)
    return loss_sum, correct


def _binary_loss(kernel, z, y, bias_grad, totals):
    blocks, threads = _launch(z.shape[0])
    scratch, cols = _loss_scratch(z.shape[0], 1, blocks)
    _configure(kernel, blocks, threads)(z, y, scratch)
    _column_sums(z, z, _IDENTITY, bias_grad, cols)
    if totals is not None:
        _keep_totals(scratch, blocks, z.shape[0], totals, bias_grad)
        return None
    _, loss_sum, correct = _loss_totals(scratch, blocks)
    return loss_sum, correct


def logistic_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``sigmoid(z) - y``. Returns ``(loss_sum, correct)``
    (``totals``: as ``softmax_xent``)."""
    return _binary_loss(_logistic_rows, z, y, bias_grad, totals)


def hinge_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``-t`` inside the margin, else 0. Returns ``(loss_sum, correct)``
    (``totals``: as ``softmax_xent``)."""
    return _binary_loss(_hinge_rows, z, y, bias_grad, totals)


def squared_hinge_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``-2 t max(0, 1 - t z)``. Returns ``(loss_sum, correct)``
    (``totals``: as ``softmax_xent``)."""
    return _binary_loss(_squared_hinge_rows, z, y, bias_grad, totals)


def squared_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``z - y``. Returns ``0.5 * sum((z - y)**2)`` (``totals``:
    as ``softmax_xent``, with 0 correct rows)."""
    blocks, threads = _launch(z.size)
    scratch, cols = _loss_scratch(*z.shape, blocks)
    _configure(_squared_rows, blocks, threads)(z, y, scratch)
    _column_sums(z, z, _IDENTITY, bias_grad, cols)
    if totals is not None:
        _keep_totals(scratch, blocks, z.shape[0], totals, bias_grad, loss_scale=0.5)
        return None
    return 0.5 * _loss_totals(scratch, blocks)[1]


# --- optimiser kernels --------------------------------------------------------------

@cuda.jit(cache=True)
def _sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay, shrink,
                decay_mask, grad_scale):
    zero = param.dtype.type(0)
    for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
        p = param[i]
        g = grad[i] * grad_scale
        if decay_mask[i]:
            g = g + weight_decay * p
        if momentum != zero:
            vel = momentum * velocity[i] + g
            velocity[i] = vel
            step = g + momentum * vel if nesterov else vel
        else:
            step = g
        p = p - lr * step
        if decay_mask[i]:
            p = _shrink(p, shrink, zero)
        param[i] = p


@cuda.jit(cache=True)
def _adam_update(param, grad, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                 eps, bias_corr1, bias_corr2, l2, decoupled_scale, shrink, decay_mask,
                 grad_scale):
    zero = param.dtype.type(0)
    for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
        p = param[i]
        g = grad[i] * grad_scale
        if decay_mask[i]:
            g = g + l2 * p
            p = p - decoupled_scale * p
        m_i = beta1 * m[i] + one_minus_beta1 * g
        v_i = beta2 * v[i] + one_minus_beta2 * g * g
        m[i] = m_i
        v[i] = v_i
        p = p - lr * (m_i / bias_corr1) / (math.sqrt(v_i / bias_corr2) + eps)
        if decay_mask[i]:
            p = _shrink(p, shrink, zero)
        param[i] = p


def sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay, l1, decay_mask,
               grad_scale=1.0):
    """SGD with optional (Nesterov) momentum, PyTorch semantics, dampening 0, then the
    L1 proximal step on the weights (see reference.py), on ``grad * grad_scale``. In place;
    ``grad`` is only read."""
    dt = param.dtype.type
    # lr * l1 is rounded once to the dtype, as the reference's weak Python scalar is.
    _configure(_sgd_update, *_launch(param.size))(param, grad, velocity, dt(lr), dt(momentum),
                                     bool(nesterov), dt(weight_decay), dt(lr * l1),
                                     decay_mask, dt(grad_scale))


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay, decoupled,
                l1, decay_mask, grad_scale=1.0):
    """Adam / AdamW (``decoupled``), PyTorch semantics, then the L1 proximal step on the
    weights (see reference.py), on ``grad * grad_scale``; ``step`` counts from 1. In place."""
    dt = param.dtype.type
    # As in cpu.py: Adam puts the decay in the gradient (l2), AdamW shrinks the
    # weight directly (decoupled_scale); the other term is zero.
    l2, decoupled_scale = (0.0, lr * weight_decay) if decoupled else (weight_decay, 0.0)
    _configure(_adam_update, *_launch(param.size))(
        param, grad, m, v, dt(lr), dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2),
        dt(eps), dt(1 - beta1**step), dt(1 - beta2**step), dt(l2), dt(decoupled_scale),
        dt(lr * l1), decay_mask, dt(grad_scale))
