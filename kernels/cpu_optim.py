"""The optimiser kernels of the cpu backend (re-exported by ``cpu.py``): SGD and Adam,
element-wise, so any split over threads gives the same bits.

    $ python -m pytest -q tests/test_kernels.py -k "sgd or adam or l1"
"""
from __future__ import annotations

import numba
import numpy as np

from .cpu_threads import _threaded


@numba.njit(inline="always")
def _shrink(p, shrink, zero):
    """``sign(p) * max(|p| - shrink, 0)``: the reference's ``_shrink_weights`` for one
    element. ``np.maximum`` keeps NaN (a diverged run still shows); copysign rather
    than branches on the sign keeps the loop vectorised; ``zero`` has p's dtype, where
    a literal 0 would widen float32 arithmetic to float64."""
    return np.copysign(np.maximum(abs(p) - shrink, zero), p)


@numba.njit(inline="always")
def _sgd_body(param, grad, velocity, lr, momentum, nesterov, weight_decay, shrink,
              decay_mask, grad_scale):
    zero = param.dtype.type(0)
    for i in numba.prange(param.shape[0]):
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
def _sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay, shrink,
                decay_mask, grad_scale):
    _sgd_body(param, grad, velocity, lr, momentum, nesterov, weight_decay, shrink,
              decay_mask, grad_scale)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _sgd_update_threaded(param, grad, velocity, lr, momentum, nesterov, weight_decay,
                         shrink, decay_mask, grad_scale):
    _sgd_body(param, grad, velocity, lr, momentum, nesterov, weight_decay, shrink,
              decay_mask, grad_scale)


@numba.njit(inline="always")
def _adam_body(param, grad, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
               eps, bias_corr1, bias_corr2, l2, decoupled_scale, shrink, decay_mask,
               grad_scale):
    zero = param.dtype.type(0)
    for i in numba.prange(param.shape[0]):
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


@numba.njit(cache=True, error_model="numpy")
def _adam_update(param, grad, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                 eps, bias_corr1, bias_corr2, l2, decoupled_scale, shrink, decay_mask,
                 grad_scale):
    _adam_body(param, grad, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
               bias_corr1, bias_corr2, l2, decoupled_scale, shrink, decay_mask, grad_scale)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _adam_update_threaded(param, grad, m, v, lr, beta1, one_minus_beta1, beta2,
                          one_minus_beta2, eps, bias_corr1, bias_corr2, l2,
                          decoupled_scale, shrink, decay_mask, grad_scale):
    _adam_body(param, grad, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
               bias_corr1, bias_corr2, l2, decoupled_scale, shrink, decay_mask, grad_scale)


def sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay, l1, decay_mask,
               grad_scale=1.0):
    """SGD with optional (Nesterov) momentum, PyTorch semantics, dampening 0, then the
    L1 proximal step on the weights (see reference.py), on ``grad * grad_scale``. In place;
    ``grad`` is only read."""
    dt = param.dtype.type
    kernel = _sgd_update_threaded if _threaded("sgd_update", param.size) else _sgd_update
    # lr * l1 is rounded once to the dtype, as the reference's weak Python scalar is.
    kernel(param, grad, velocity, dt(lr), dt(momentum), bool(nesterov), dt(weight_decay),
           dt(lr * l1), decay_mask, dt(grad_scale))


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay, decoupled,
                l1, decay_mask, grad_scale=1.0):
    """Adam / AdamW (``decoupled``), PyTorch semantics, then the L1 proximal step on the
    weights (see reference.py), on ``grad * grad_scale``; ``step`` counts from 1. In place."""
    dt = param.dtype.type
    kernel = _adam_update_threaded if _threaded("adam_update", param.size) else _adam_update
    # One kernel covers both: Adam puts the decay in the gradient (l2), AdamW
    # shrinks the weight directly (decoupled_scale); the other term is zero.
    l2, decoupled_scale = (0.0, lr * weight_decay) if decoupled else (weight_decay, 0.0)
    kernel(param, grad, m, v, dt(lr), dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2),
           dt(eps), dt(1 - beta1**step), dt(1 - beta2**step), dt(l2), dt(decoupled_scale),
           dt(lr * l1), decay_mask, dt(grad_scale))
