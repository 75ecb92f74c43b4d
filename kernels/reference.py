"""Plain NumPy versions of every kernel: the definition of correct.

Each function is written to be read, not to be fast; ``cpu.py`` (Numba) and any GPU
backend must agree with these. Conventions shared by all kernels:

* ``n`` (rows in the batch) may be 0; losses are then 0 and outputs are zero-filled.
* "In place" means the first array argument is overwritten with the result.
* Gradients are per-sample sums, not means: the caller divides by the global batch
  size after the Allreduce, so every rank contributes the same way however the batch
  is split.
* Loss kernels return their sums, or, given ``totals`` (a float64 array of 3 on the
  kernels' device), write ``[loss sum, correct rows, rows]`` there and return None: on a
  GPU the sums then stay on the device until the step's one read.
* Loss sums are accumulated in float64; everything else stays in the array's dtype.
  Python-float hyper-parameters are "weak" scalars under NumPy 2, so float32 arrays
  stay float32.
* Optimiser updates regularise only the elements whose ``decay_mask`` is 1 (weights,
  never biases): weight decay as L2 in the gradient (decoupled for AdamW), L1 as a
  proximal step after the update (``_shrink_weights``).
"""
import numpy as np

ACTIVATIONS = ("identity", "relu", "tanh")


def check_activation(activation):
    """Raise ValueError unless ``activation`` is one of ``ACTIVATIONS``."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}"
        )


def check_labels(labels, k):
    """Raise ValueError for class labels outside [0, k).

    NumPy would wrap a negative label round to the last class, and Numba does not
    bounds-check at all, so a bad label must be caught before it is used as an index.
    """
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"class labels must lie in [0, {k})")


def bias_act_forward(z, b, activation):
    """In place: ``z[i, j] = act(z[i, j] + b[j])``."""
    check_activation(activation)
    z += b
    if activation == "relu":
        np.maximum(z, 0, out=z)
    elif activation == "tanh":
        np.tanh(z, out=z)


def act_backward(grad, out, activation, bias_grad):
    """In place: ``grad *= act'(pre-activation)``; ``bias_grad`` = column sums.

    The derivative is written through the forward output ``out`` so the
    pre-activation never has to be kept.
    """
    check_activation(activation)
    if activation == "relu":
        grad *= out > 0
    elif activation == "tanh":
        grad *= 1 - out * out
    bias_grad[...] = grad.sum(axis=0)


def _sums(totals, loss_sum, correct, rows):
    """``(loss_sum, correct)``, or None once they (and ``rows``) are in ``totals``."""
    if totals is None:
        return loss_sum, correct
    totals[0], totals[1], totals[2] = loss_sum, correct, rows
    return None


def softmax_xent(logits, labels, bias_grad, totals=None):
    """Softmax cross-entropy. In place: ``logits`` becomes ``p - onehot(labels)``.

    Returns ``(loss_sum, correct)``; ``correct`` counts rows whose first argmax
    equals the label. With ``totals``, see the module docstring.
    """
    n, k = logits.shape
    check_labels(labels, k)
    rows = np.arange(n)
    correct = int(np.count_nonzero(logits.argmax(axis=1) == labels))

    # Shifting by the row max keeps exp() from overflowing; the loss is unchanged.
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    norm = exp.sum(axis=1)
    loss_sum = float(np.sum(np.log(norm) - shifted[rows, labels], dtype=np.float64))

    logits[...] = exp / norm[:, None]
    logits[rows, labels] -= 1
    bias_grad[...] = logits.sum(axis=0)
    return _sums(totals, loss_sum, correct, n)


def _binary_correct(z, y):
    """Rows where the sign of the logit (``z > 0`` means class 1) matches ``y``."""
    return int(np.count_nonzero((z > 0) == (y == 1)))


def logistic_loss_grad(z, y, bias_grad, totals=None):
    """Binary cross-entropy on logits ``z`` (n, 1). In place: ``z`` becomes
    ``sigmoid(z) - y``. Returns ``(loss_sum, correct)``."""
    col = z[:, 0]  # a view: writing it writes z; avoids (n,1)-(n,) broadcasting
    correct = _binary_correct(col, y)

    # exp(-|z|) never overflows; both the loss and the sigmoid are built from it.
    e = np.exp(-np.abs(col))
    # max(z, 0) - y z is exact for y in {0, 1}; grouping it first avoids cancelling
    # a tiny log1p term against a large |z|.
    loss = np.log1p(e) + (np.maximum(col, 0) - y * col)
    loss_sum = float(np.sum(loss, dtype=np.float64))

    sigmoid = np.where(col >= 0, 1 / (1 + e), e / (1 + e))
    col[...] = sigmoid - y
    bias_grad[...] = z.sum(axis=0)
    return _sums(totals, loss_sum, correct, len(col))


def hinge_loss_grad(z, y, bias_grad, totals=None):
    """Hinge loss ``max(0, 1 - t z)`` with ``t = 2y - 1``. In place: ``z`` becomes
    the subgradient ``-t`` inside the margin, else 0. Returns ``(loss_sum, correct)``."""
    col = z[:, 0]
    correct = _binary_correct(col, y)

    t = 2 * y - 1
    margin = t * col
    loss_sum = float(np.sum(np.maximum(0, 1 - margin), dtype=np.float64))

    col[...] = np.where(margin < 1, -t, 0)
    bias_grad[...] = z.sum(axis=0)
    return _sums(totals, loss_sum, correct, len(col))


def squared_hinge_loss_grad(z, y, bias_grad, totals=None):
    """Squared hinge loss ``max(0, 1 - t z)**2`` with ``t = 2y - 1`` (LIBLINEAR's L2-loss
    SVM): the hinge made differentiable, so a line search can use it. In place: ``z``
    becomes ``-2 t max(0, 1 - t z)``, 0 on and past the margin. Returns
    ``(loss_sum, correct)``.

    A NaN output gives a NaN loss and gradient (the hinge's ``margin < 1`` test would
    drop it), so the step's non-finite check sees it.
    """
    col = z[:, 0]
    correct = _binary_correct(col, y)

    t = 2 * y - 1
    margin = t * col
    inside = ~(margin >= 1)  # NaN counts as inside
    slack = np.where(inside, 1 - margin, 0)
    loss_sum = float(np.sum(slack * slack, dtype=np.float64))

    # t is +-1, so -t * (2 slack) is exact: every backend writes the same bits.
    col[...] = np.where(inside, -t * (slack + slack), 0)
    bias_grad[...] = z.sum(axis=0)
    return _sums(totals, loss_sum, correct, len(col))


def squared_loss_grad(z, y, bias_grad, totals=None):
    """``0.5 * sum((z - y)**2)``. In place: ``z`` becomes ``z - y``. Returns the loss sum
    (with ``totals``: writes it, 0 correct rows and the rows there)."""
    z -= y
    loss_sum = 0.5 * float(np.sum(z * z, dtype=np.float64))
    bias_grad[...] = z.sum(axis=0)
    return loss_sum if totals is None else _sums(totals, loss_sum, 0, len(z))


def _regularized(grad, param, weight_decay, decay_mask):
    """``grad`` plus the L2 term on the elements the mask marks as weights."""
    return grad + decay_mask * (weight_decay * param)


def _shrink_weights(param, lr, l1, decay_mask):
    """In place, on the weights only: ``p = sign(p) * max(|p| - lr * l1, 0)``.

    This is the proximal step of the L1 penalty ``l1 * |p|`` (soft thresholding, the
    "truncated gradient" of Langford, Li and Zhang, which Vowpal Wabbit's ``--l1`` uses;
    scikit-learn's SGD uses a cumulative variant). It is continuous in ``p``: a weight
    that is 0 in exact arithmetic but +-1e-21 after a sum taken in another order (on
    another number of ranks) goes to exactly 0 either way, where a subgradient
    ``l1 * sign(p)`` would step it a whole ``lr * l1`` up or down. It also puts weights
    exactly at 0, which a subgradient never does.
    """
    shrunk = np.sign(param) * np.maximum(np.abs(param) - lr * l1, 0)
    param[...] = np.where(decay_mask != 0, shrunk, param)


def sgd_update(param, grad, velocity, lr, momentum, nesterov, weight_decay, l1, decay_mask,
               grad_scale=1.0):
    """SGD with optional (Nesterov) momentum, PyTorch semantics, dampening 0, then L1.

    The gradient used is ``grad * grad_scale``: training passes the summed gradient and
    1 / (rows in the global batch), so the division costs no pass of its own; ``grad``
    is only read.

    All arrays are flat and updated in place (``param`` always, ``velocity`` only
    when ``momentum != 0``). Weight decay (L2) is added to the gradient of the weights;
    L1 is applied after the update as a proximal step (``_shrink_weights``), so the
    velocity accumulates the loss and L2 gradient only: the L1 term's sign(p) is
    discontinuous at 0, and carried in the velocity it would push weights back and
    forth across 0 instead of letting them rest there. One consequence: the shrink is
    taken once per step while the velocity builds up to ``1 / (1 - momentum)``
    gradients, so with momentum a weight settles where its gradient is
    ``(1 - momentum) * l1`` rather than ``l1`` (and stays at 0 below that).
    """
    g = _regularized(grad * grad_scale, param, weight_decay, decay_mask)
    if momentum != 0:
        velocity[...] = momentum * velocity + g
        step = g + momentum * velocity if nesterov else velocity
    else:
        step = g
    param -= lr * step
    _shrink_weights(param, lr, l1, decay_mask)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay, decoupled,
                l1, decay_mask, grad_scale=1.0):
    """Adam (L2 in the gradient) or AdamW (``decoupled``: decay applied to the
    weights directly), PyTorch semantics, then L1. ``step`` counts from 1; the gradient
    is ``grad * grad_scale``, as in ``sgd_update``.

    ``param``, ``m`` and ``v`` are updated in place. L1 is applied after the update as
    a proximal step (``_shrink_weights``): each weight moves ``lr * l1`` towards 0 and
    stops there, a distance that Adam's per-element scaling does not touch, so a
    weight stays at 0 while ``|m_hat| / (sqrt(v_hat) + eps) <= l1``. The moments see
    the loss (and, for Adam, L2) gradient only: a sign(p) term in them would be
    discontinuous at 0, and Adam's per-element scaling would turn it into a step of
    about ``lr`` for any weight whose gradient is near 0, so such weights would jump
    across 0 every step rather than settle at it.
    """
    g = _regularized(grad * grad_scale, param, 0.0 if decoupled else weight_decay, decay_mask)
    if decoupled:
        param -= lr * weight_decay * param * decay_mask
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    param -= lr * m_hat / (np.sqrt(v_hat) + eps)
    _shrink_weights(param, lr, l1, decay_mask)
