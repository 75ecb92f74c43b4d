"""Numba versions of every kernel, each fused into one sweep over the batch.

Same names, signatures and results as ``reference.py``. Each public function is a
thin Python wrapper that checks the activation name, turns Python hyper-parameters
into scalars of the array's dtype, and calls one ``@njit`` kernel. Casting up front
means float32 buffers are updated with float32 arithmetic (twice the SIMD width, and
the same rounding as the NumPy reference), and each kernel compiles once per dtype.

Kernels are serial on purpose: they are element-wise passes that cost little next to
the GEMMs, which get the rank's BLAS threads. ``cache=True`` keeps compiled code on disk so later runs skip the JIT.
``error_model="numpy"`` makes float division follow IEEE rules (inf/nan, as the
NumPy reference does) instead of raising ZeroDivisionError; without it the check
on every division stops LLVM from vectorising loops such as Adam's (about 10x).
"""
import numba
import numpy as np

from .reference import ACTIVATIONS, check_activation

# Activation names become small ints so one compiled kernel serves all three.
_ACT_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}
_IDENTITY, _RELU, _TANH = (_ACT_CODE[name] for name in ("identity", "relu", "tanh"))


# --- layer kernels ---------------------------------------------------------------

@numba.njit(cache=True, error_model="numpy")
def _bias_act_forward(z, b, code):
    n, k = z.shape
    # The activation branch sits outside the loops so each inner loop is branch-free.
    if code == _RELU:
        for i in range(n):
            for j in range(k):
                x = z[i, j] + b[j]
                z[i, j] = x if x > 0 else 0
    elif code == _TANH:
        for i in range(n):
            for j in range(k):
                z[i, j] = np.tanh(z[i, j] + b[j])
    else:
        for i in range(n):
            for j in range(k):
                z[i, j] += b[j]


@numba.njit(cache=True, error_model="numpy")
def _act_backward(grad, out, code, bias_grad):
    n, k = grad.shape
    bias_grad[:] = 0
    if code == _RELU:
        for i in range(n):
            for j in range(k):
                if not out[i, j] > 0:
                    grad[i, j] = 0
                bias_grad[j] += grad[i, j]
    elif code == _TANH:
        for i in range(n):
            for j in range(k):
                o = out[i, j]
                grad[i, j] *= 1 - o * o
                bias_grad[j] += grad[i, j]
    else:
        for i in range(n):
            for j in range(k):
                bias_grad[j] += grad[i, j]


def bias_act_forward(z, b, activation):
    """In place: ``z[i, j] = act(z[i, j] + b[j])``."""
    check_activation(activation)
    _bias_act_forward(z, b, _ACT_CODE[activation])


def act_backward(grad, out, activation, bias_grad):
    """In place: ``grad *= act'(pre-activation)``; ``bias_grad`` = column sums."""
    check_activation(activation)
    _act_backward(grad, out, _ACT_CODE[activation], bias_grad)


# --- loss kernels ----------------------------------------------------------------

@numba.njit(cache=True, error_model="numpy")
def _softmax_xent(logits, labels, bias_grad):
    n, k = logits.shape
    # Validate every label before touching logits: Numba does no bounds checks.
    for i in range(n):
        if labels[i] < 0 or labels[i] >= k:
            raise ValueError("class labels must lie in [0, k)")
    bias_grad[:] = 0
    loss_sum = 0.0
    correct = 0
    for i in range(n):
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
            bias_grad[j] += row[j]
    return loss_sum, correct


@numba.njit(cache=True, error_model="numpy")
def _logistic_loss_grad(z, y, bias_grad):
    n = z.shape[0]
    bias_grad[0] = 0
    loss_sum = 0.0
    correct = 0
    for i in range(n):
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
        bias_grad[0] += z[i, 0]
    return loss_sum, correct


@numba.njit(cache=True, error_model="numpy")
def _hinge_loss_grad(z, y, bias_grad):
    n = z.shape[0]
    bias_grad[0] = 0
    loss_sum = 0.0
    correct = 0
    for i in range(n):
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
        bias_grad[0] += z[i, 0]
    return loss_sum, correct


@numba.njit(cache=True, error_model="numpy")
def _squared_loss_grad(z, y, bias_grad):
    n, k = z.shape
    bias_grad[:] = 0
    loss_sum = 0.0
    for i in range(n):
        for j in range(k):
            d = z[i, j] - y[i, j]
            z[i, j] = d
            loss_sum += d * d
            bias_grad[j] += d
    return 0.5 * loss_sum


def _sums(totals, loss_sum, correct, rows):
    """``(loss_sum, correct)`` as Python numbers, or None once they are in ``totals``."""
    if totals is None:
        return float(loss_sum), int(correct)
    totals[0], totals[1], totals[2] = loss_sum, correct, rows
    return None


def softmax_xent(logits, labels, bias_grad, totals=None):
    """In place: ``logits`` becomes ``p - onehot(labels)``. Returns ``(loss_sum, correct)``."""
    loss_sum, correct = _softmax_xent(logits, labels, bias_grad)
    return _sums(totals, loss_sum, correct, logits.shape[0])


def logistic_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``sigmoid(z) - y``. Returns ``(loss_sum, correct)``."""
    loss_sum, correct = _logistic_loss_grad(z, y, bias_grad)
    return _sums(totals, loss_sum, correct, z.shape[0])


def hinge_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``-t`` inside the margin, else 0. Returns ``(loss_sum, correct)``."""
    loss_sum, correct = _hinge_loss_grad(z, y, bias_grad)
    return _sums(totals, loss_sum, correct, z.shape[0])


def squared_loss_grad(z, y, bias_grad, totals=None):
    """In place: ``z`` becomes ``z - y``. Returns ``0.5 * sum((z - y)**2)``."""
    loss_sum = float(_squared_loss_grad(z, y, bias_grad))
    return loss_sum if totals is None else _sums(totals, loss_sum, 0, z.shape[0])


# --- optimiser kernels -----------------------------------------------------------

@numba.njit(inline="always")
def _shrink(p, shrink, zero):
    """``sign(p) * max(|p| - shrink, 0)``: the reference's ``_shrink_weights`` for one
    element. ``np.maximum`` keeps NaN (a diverged run still shows); copysign rather
    than branches on the sign keeps the loop vectorised; ``zero`` has p's dtype, where
    a literal 0 would widen float32 arithmetic to float64."""
    return np.copysign(np.maximum(abs(p) - shrink, zero), p)


@numba.njit(cache=True, error_model="numpy")
def _sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay, shrink,
                decay_mask, grad_scale):
    zero = param.dtype.type(0)
    for i in range(param.shape[0]):
        p = param[i]
        g = grad[i] * grad_scale
        if decay_mask[i]:
            g = g + weight_decay * p
        if momentum != 0:
            vel = momentum * velocity[i] + g
            velocity[i] = vel
            step = g + momentum * vel if nesterov else vel
        else:
            step = g
        p = p - lr * step
        if decay_mask[i]:
            p = _shrink(p, shrink, zero)
        param[i] = p


@numba.njit(cache=True, error_model="numpy")
def _adam_update(param, grad, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                 eps, bias_corr1, bias_corr2, l2, decoupled_scale, shrink, decay_mask,
                 grad_scale):
    zero = param.dtype.type(0)
    for i in range(param.shape[0]):
        p = param[i]
        g = grad[i] * grad_scale
        if decay_mask[i]:
            g = g + l2 * p
            p = p - decoupled_scale * p
        m_i = beta1 * m[i] + one_minus_beta1 * g
        v_i = beta2 * v[i] + one_minus_beta2 * g * g
        m[i] = m_i
        v[i] = v_i
        m_hat = m_i / bias_corr1
        v_hat = v_i / bias_corr2
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
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
    _sgd_update(param, grad, velocity, dt(lr), dt(momentum), bool(nesterov),
                dt(weight_decay), dt(lr * l1), decay_mask, dt(grad_scale))


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay, decoupled,
                l1, decay_mask, grad_scale=1.0):
    """Adam / AdamW (``decoupled``), PyTorch semantics, then the L1 proximal step on the
    weights (see reference.py), on ``grad * grad_scale``; ``step`` counts from 1. In place."""
    dt = param.dtype.type
    # One kernel covers both: Adam puts the decay in the gradient (l2), AdamW
    # shrinks the weight directly (decoupled_scale); the other term is zero.
    l2, decoupled_scale = (0.0, lr * weight_decay) if decoupled else (weight_decay, 0.0)
    _adam_update(param, grad, m, v, dt(lr), dt(beta1), dt(1 - beta1), dt(beta2),
                 dt(1 - beta2), dt(eps), dt(1 - beta1**step), dt(1 - beta2**step),
                 dt(l2), dt(decoupled_scale), dt(lr * l1), decay_mask, dt(grad_scale))
