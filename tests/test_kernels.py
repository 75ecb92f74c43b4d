"""Tests for mpi_dml.kernels: the Numba backend against the NumPy reference, and the
reference against independent truths (finite differences, hand-unrolled optimiser
steps, known values)."""
import subprocess
import sys
import zlib

import numpy as np
import pytest

from mpi_dml import kernels

REF = kernels.get("reference")
CPU = kernels.get("cpu")
BACKENDS = ("reference", "cpu")
DTYPES = (np.float32, np.float64)
ACTIVATIONS = ("identity", "relu", "tanh")
SIZES = (0, 1, 7, 64)


def tol(dtype, scale=1.0):
    """Tolerances for comparing two backends; ``scale`` widens atol for sums."""
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-5, "atol": 1e-6 * scale}
    return {"rtol": 1e-12, "atol": 1e-12 * scale}


def rng_for(*params):
    """A generator seeded from the test's parameters, so each case is reproducible
    (crc32 rather than hash(), which is salted per process)."""
    return np.random.default_rng(zlib.crc32(repr(params).encode()))


def both(array):
    """Two independent copies of ``array``: one per backend under comparison."""
    return array.copy(), array.copy()


def garbage(k, dtype):
    """A bias-grad buffer full of junk, to show kernels overwrite rather than add."""
    return np.full(k, 7.0, dtype=dtype)


def central_difference(f, x, h=1e-6):
    """d f / d x for scalar ``f`` of a float64 array ``x``, by central differences."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        saved = x[idx]
        x[idx] = saved + h
        up = f(x)
        x[idx] = saved - h
        down = f(x)
        x[idx] = saved
        grad[idx] = (up - down) / (2 * h)
    return grad


# --- registry ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_defines_every_name(backend):
    module = kernels.get(backend)
    missing = [name for name in kernels.NAMES if not callable(getattr(module, name, None))]
    assert missing == []


def test_default_backend_is_cpu():
    assert kernels.get() is CPU


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="reference.*cpu"):
        kernels.get("fortran")


def test_importing_the_package_does_not_compile():
    code = "import sys, mpi_dml.kernels; print('mpi_dml.kernels.cpu' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_warm_up_runs(backend, dtype):
    assert kernels.warm_up(backend, dtype) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_activation_is_rejected(backend):
    module = kernels.get(backend)
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="relu"):
        module.bias_act_forward(z, np.zeros(3), "sigmoid")
    with pytest.raises(ValueError, match="tanh"):
        module.act_backward(z, z.copy(), "swish", np.zeros(3))


# --- layers -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n", SIZES)
def test_layer_cpu_matches_reference(dtype, activation, n):
    rng = rng_for(dtype, activation, n)
    k = 5
    z_ref, z_cpu = both(rng.standard_normal((n, k)).astype(dtype))
    b = rng.standard_normal(k).astype(dtype)
    REF.bias_act_forward(z_ref, b, activation)
    CPU.bias_act_forward(z_cpu, b, activation)
    np.testing.assert_allclose(z_cpu, z_ref, **tol(dtype))

    g_ref, g_cpu = both(rng.standard_normal((n, k)).astype(dtype))
    bg_ref, bg_cpu = garbage(k, dtype), garbage(k, dtype)
    REF.act_backward(g_ref, z_ref, activation, bg_ref)
    CPU.act_backward(g_cpu, z_ref, activation, bg_cpu)
    np.testing.assert_allclose(g_cpu, g_ref, **tol(dtype))
    np.testing.assert_allclose(bg_cpu, bg_ref, **tol(dtype, scale=n + 1))
    if n == 0:
        np.testing.assert_array_equal(bg_cpu, 0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_layer_gradient_matches_finite_differences(activation):
    rng = rng_for(activation)
    n, k = 4, 3
    z = rng.standard_normal((n, k))
    b = rng.standard_normal(k)
    z[np.abs(z + b) < 0.05] += 0.2  # keep relu away from its kink
    weights = rng.standard_normal((n, k))

    def objective(z_in, b_in):
        out = z_in.copy()
        REF.bias_act_forward(out, b_in, activation)
        return float(np.sum(weights * out))

    out = z.copy()
    REF.bias_act_forward(out, b, activation)
    grad, bias_grad = weights.copy(), np.empty(k)
    REF.act_backward(grad, out, activation, bias_grad)

    np.testing.assert_allclose(grad, central_difference(lambda x: objective(x, b), z),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(bias_grad,
                               central_difference(lambda x: objective(z, x), b.copy()),
                               rtol=1e-6, atol=1e-8)


# --- losses: cpu against reference ------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("k", (1, 3, 10))
def test_softmax_xent_cpu_matches_reference(dtype, n, k):
    rng = rng_for(dtype, n, k)
    l_ref, l_cpu = both((3 * rng.standard_normal((n, k))).astype(dtype))
    labels = rng.integers(0, k, size=n)
    bg_ref, bg_cpu = garbage(k, dtype), garbage(k, dtype)
    loss_ref, correct_ref = REF.softmax_xent(l_ref, labels, bg_ref)
    loss_cpu, correct_cpu = CPU.softmax_xent(l_cpu, labels, bg_cpu)
    assert isinstance(loss_cpu, float) and isinstance(correct_cpu, int)
    assert correct_cpu == correct_ref
    np.testing.assert_allclose(loss_cpu, loss_ref, **tol(dtype, scale=n + 1))
    np.testing.assert_allclose(l_cpu, l_ref, **tol(dtype))
    np.testing.assert_allclose(bg_cpu, bg_ref, **tol(dtype, scale=n + 1))


@pytest.mark.parametrize("loss_name", ("logistic_loss_grad", "hinge_loss_grad"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_binary_losses_cpu_match_reference(loss_name, dtype, n):
    rng = rng_for(loss_name, dtype, n)
    z_ref, z_cpu = both((2 * rng.standard_normal((n, 1))).astype(dtype))
    y = rng.integers(0, 2, size=n).astype(dtype)
    bg_ref, bg_cpu = garbage(1, dtype), garbage(1, dtype)
    loss_ref, correct_ref = getattr(REF, loss_name)(z_ref, y, bg_ref)
    loss_cpu, correct_cpu = getattr(CPU, loss_name)(z_cpu, y, bg_cpu)
    assert isinstance(loss_cpu, float) and isinstance(correct_cpu, int)
    assert correct_cpu == correct_ref
    np.testing.assert_allclose(loss_cpu, loss_ref, **tol(dtype, scale=n + 1))
    np.testing.assert_allclose(z_cpu, z_ref, **tol(dtype))
    np.testing.assert_allclose(bg_cpu, bg_ref, **tol(dtype, scale=n + 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_squared_loss_cpu_matches_reference(dtype, n):
    rng = rng_for(dtype, n)
    k = 3
    z_ref, z_cpu = both(rng.standard_normal((n, k)).astype(dtype))
    y = rng.standard_normal((n, k)).astype(dtype)
    bg_ref, bg_cpu = garbage(k, dtype), garbage(k, dtype)
    loss_ref = REF.squared_loss_grad(z_ref, y, bg_ref)
    loss_cpu = CPU.squared_loss_grad(z_cpu, y, bg_cpu)
    assert isinstance(loss_cpu, float)
    np.testing.assert_allclose(loss_cpu, loss_ref, **tol(dtype, scale=n + 1))
    np.testing.assert_allclose(z_cpu, z_ref, **tol(dtype))
    np.testing.assert_allclose(bg_cpu, bg_ref, **tol(dtype, scale=n + 1))


# --- losses: reference against independent truths --------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_name", ("softmax_xent", "logistic_loss_grad", "hinge_loss_grad",
                                       "squared_loss_grad"))
def test_losses_can_leave_their_sums_in_totals(backend, loss_name):
    """[loss sum, correct rows, rows] in ``totals``, None returned, the same outputs."""
    k = kernels.get(backend)
    rng = rng_for("totals", backend, loss_name)
    n, width = 9, (4 if loss_name in ("softmax_xent", "squared_loss_grad") else 1)
    z = rng.standard_normal((n, width))
    target = {"softmax_xent": rng.integers(0, width, size=n),
              "squared_loss_grad": rng.standard_normal((n, width))}.get(
                  loss_name, rng.integers(0, 2, size=n).astype(float))
    z_plain, z_kept = both(z)
    bg_plain, bg_kept = garbage(width, np.float64), garbage(width, np.float64)
    plain = getattr(k, loss_name)(z_plain, target, bg_plain)
    loss, correct = plain if isinstance(plain, tuple) else (plain, 0)
    totals = np.full(3, -1.0)
    assert getattr(k, loss_name)(z_kept, target, bg_kept, totals) is None
    np.testing.assert_allclose(totals, [loss, correct, n], rtol=1e-12)
    assert loss > 0 and (correct > 0 or loss_name == "squared_loss_grad")
    np.testing.assert_array_equal(z_kept, z_plain)
    np.testing.assert_array_equal(bg_kept, bg_plain)


def _loss_only(loss_name, target):
    """Scalar loss of the reference kernel as a function of (a copy of) the logits."""
    def f(z):
        value = getattr(REF, loss_name)(z.copy(), target, np.empty(z.shape[1]))
        return value[0] if isinstance(value, tuple) else value
    return f


@pytest.mark.parametrize("loss_name", ("softmax_xent", "logistic_loss_grad",
                                       "hinge_loss_grad", "squared_loss_grad"))
def test_loss_gradient_matches_finite_differences(loss_name):
    rng = rng_for(loss_name)
    n = 6
    if loss_name == "softmax_xent":
        z = rng.standard_normal((n, 4))
        target = rng.integers(0, 4, size=n)
    elif loss_name == "squared_loss_grad":
        z = rng.standard_normal((n, 3))
        target = rng.standard_normal((n, 3))
    else:
        z = rng.standard_normal((n, 1))
        target = rng.integers(0, 2, size=n).astype(np.float64)
        if loss_name == "hinge_loss_grad":
            # Stay clear of the kink at t*z == 1, where there is no derivative.
            t = 2 * target - 1
            z[np.abs(1 - t * z[:, 0]) < 0.05, 0] += 0.2

    expected = central_difference(_loss_only(loss_name, target), z.copy())
    grad, bias_grad = z.copy(), np.empty(z.shape[1])
    getattr(REF, loss_name)(grad, target, bias_grad)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(bias_grad, expected.sum(axis=0), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_loss_values(backend):
    module = kernels.get(backend)
    # Uniform logits: loss is log(k) per row, gradient 1/k off the label, 1/k - 1 on it.
    logits = np.zeros((2, 4))
    loss, _ = module.softmax_xent(logits, np.array([1, 3]), np.empty(4))
    assert loss == pytest.approx(2 * np.log(4))
    np.testing.assert_allclose(logits, [[0.25, -0.75, 0.25, 0.25],
                                        [0.25, 0.25, 0.25, -0.75]])
    # Logit 0: loss log 2 per row, gradient 0.5 - y; z == 0 predicts class 0.
    z = np.zeros((2, 1))
    loss, correct = module.logistic_loss_grad(z, np.array([0.0, 1.0]), np.empty(1))
    assert loss == pytest.approx(2 * np.log(2))
    assert correct == 1
    np.testing.assert_allclose(z[:, 0], [0.5, -0.5])
    # Hinge: inside the margin, on it, and well past it.
    z = np.array([[0.5], [1.0], [-3.0]])
    bias_grad = np.empty(1)
    loss, correct = module.hinge_loss_grad(z, np.array([1.0, 1.0, 0.0]), bias_grad)
    assert loss == pytest.approx(0.5)
    assert correct == 3
    np.testing.assert_array_equal(z[:, 0], [-1.0, 0.0, 0.0])
    assert bias_grad[0] == -1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_ties_go_to_the_first_class(backend):
    logits = np.array([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    _, correct = kernels.get(backend).softmax_xent(logits, np.array([0, 1]), np.empty(3))
    assert correct == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits_stay_finite(backend, dtype):
    module = kernels.get(backend)
    logits = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]], dtype=dtype)
    loss, correct = module.softmax_xent(logits, np.array([1, 1]), np.empty(2, dtype))
    assert loss == pytest.approx(2000.0)
    assert correct == 1
    np.testing.assert_allclose(logits, [[1.0, -1.0], [0.0, 0.0]])

    z = np.array([[1000.0], [-1000.0], [1000.0]], dtype=dtype)
    loss, correct = module.logistic_loss_grad(z, np.array([0.0, 0.0, 1.0], dtype),
                                              np.empty(1, dtype))
    assert loss == pytest.approx(1000.0)
    assert correct == 2
    np.testing.assert_allclose(z[:, 0], [1.0, 0.0, 0.0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_label", (-1, 3))
def test_out_of_range_labels_are_rejected_before_writing(backend, bad_label):
    logits = np.ones((2, 3))
    with pytest.raises(ValueError, match="labels"):
        kernels.get(backend).softmax_xent(logits, np.array([0, bad_label]), np.empty(3))
    np.testing.assert_array_equal(logits, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_gives_zero_loss_and_zero_bias_grad(backend, dtype):
    module = kernels.get(backend)
    bias_grad = garbage(4, dtype)
    assert module.softmax_xent(np.empty((0, 4), dtype), np.empty(0, np.int64),
                               bias_grad) == (0.0, 0)
    np.testing.assert_array_equal(bias_grad, 0)
    for name in ("logistic_loss_grad", "hinge_loss_grad"):
        bias_grad = garbage(1, dtype)
        assert getattr(module, name)(np.empty((0, 1), dtype), np.empty(0, dtype),
                                     bias_grad) == (0.0, 0)
        np.testing.assert_array_equal(bias_grad, 0)
    bias_grad = garbage(4, dtype)
    assert module.squared_loss_grad(np.empty((0, 4), dtype), np.empty((0, 4), dtype),
                                    bias_grad) == 0.0
    np.testing.assert_array_equal(bias_grad, 0)


# --- optimisers -------------------------------------------------------------------

def _flat_problem(dtype, size, seed):
    """Parameters, per-step gradients and a decay mask with some bias elements."""
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(3)]
    mask = (rng.random(size) < 0.7).astype(np.uint8)
    return param, grads, mask


SGD_CASES = [
    # momentum, nesterov, weight_decay, l1
    (0.0, False, 0.0, 0.0),
    (0.0, False, 1e-2, 1e-3),
    (0.9, False, 0.0, 0.0),
    (0.9, True, 5e-3, 1e-3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", (0, 1, 37))
@pytest.mark.parametrize("momentum, nesterov, weight_decay, l1", SGD_CASES)
def test_sgd_cpu_matches_reference(dtype, size, momentum, nesterov, weight_decay, l1):
    param, grads, mask = _flat_problem(dtype, size, seed=size)
    p_ref, p_cpu = both(param)
    v_ref, v_cpu = both(np.zeros(size, dtype))
    for grad in grads:
        REF.sgd_update(p_ref, grad, v_ref, 0.1, momentum, nesterov, weight_decay, l1, mask)
        CPU.sgd_update(p_cpu, grad, v_cpu, 0.1, momentum, nesterov, weight_decay, l1, mask)
    np.testing.assert_allclose(p_cpu, p_ref, **tol(dtype))
    np.testing.assert_allclose(v_cpu, v_ref, **tol(dtype))
    if momentum == 0:
        np.testing.assert_array_equal(v_cpu, 0)


ADAM_CASES = [
    # weight_decay, decoupled, l1
    (0.0, False, 0.0),
    (1e-2, False, 1e-3),
    (1e-2, True, 0.0),
    (5e-2, True, 1e-3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", (0, 1, 37))
@pytest.mark.parametrize("weight_decay, decoupled, l1", ADAM_CASES)
def test_adam_cpu_matches_reference(dtype, size, weight_decay, decoupled, l1):
    param, grads, mask = _flat_problem(dtype, size, seed=size + 1)
    p_ref, p_cpu = both(param)
    m_ref, m_cpu = both(np.zeros(size, dtype))
    v_ref, v_cpu = both(np.zeros(size, dtype))
    for step, grad in enumerate(grads, start=1):
        args = (1e-2, 0.9, 0.999, 1e-8, step, weight_decay, decoupled, l1, mask)
        REF.adam_update(p_ref, grad, m_ref, v_ref, *args)
        CPU.adam_update(p_cpu, grad, m_cpu, v_cpu, *args)
    np.testing.assert_allclose(p_cpu, p_ref, **tol(dtype))
    np.testing.assert_allclose(m_cpu, m_ref, **tol(dtype))
    np.testing.assert_allclose(v_cpu, v_ref, **tol(dtype))


# Three elements: a positive weight, a negative weight, and a bias (no decay).
P0 = np.array([0.5, -0.3, 0.2])
MASK = np.array([1, 1, 0], dtype=np.uint8)
G1 = np.array([0.1, -0.2, 0.3])
G2 = np.array([0.05, 0.1, -0.1])


def shrink_by_hand(p, shrink):
    """L1's proximal step for these weights, none of which comes within ``shrink`` of 0:
    each moves ``shrink`` towards 0; the bias (MASK 0) stays."""
    assert np.all(np.abs(p[MASK == 1]) > shrink)
    return p - MASK * np.sign(p) * shrink


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_nesterov_two_steps_by_hand(backend):
    lr, mu, wd, l1 = 0.1, 0.9, 0.01, 0.001
    param, velocity = P0.copy(), np.zeros(3)
    for grad in (G1, G2):
        kernels.get(backend).sgd_update(param, grad, velocity, lr, mu, True, wd, l1, MASK)

    # L2 enters the gradient (and so the velocity); L1 shrinks after the step.
    g1 = G1 + MASK * wd * P0
    v1 = g1
    p1 = shrink_by_hand(P0 - lr * (g1 + mu * v1), lr * l1)
    g2 = G2 + MASK * wd * p1
    v2 = mu * v1 + g2
    p2 = shrink_by_hand(p1 - lr * (g2 + mu * v2), lr * l1)
    np.testing.assert_allclose(param, p2, rtol=1e-12)
    np.testing.assert_allclose(velocity, v2, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_sgd_two_steps_by_hand(backend):
    param, velocity = P0.copy(), np.full(3, 5.0)
    for grad in (G1, G2):
        kernels.get(backend).sgd_update(param, grad, velocity, 0.1, 0.0, False, 0.0, 0.0,
                                        MASK)
    np.testing.assert_allclose(param, P0 - 0.1 * G1 - 0.1 * G2, rtol=1e-12)
    np.testing.assert_array_equal(velocity, 5.0)  # untouched without momentum


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decoupled", (False, True))
@pytest.mark.parametrize("l1", (0.0, 0.5))
def test_adam_two_steps_by_hand(backend, decoupled, l1):
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    param, m, v = P0.copy(), np.zeros(3), np.zeros(3)
    for step, grad in enumerate((G1, G2), start=1):
        kernels.get(backend).adam_update(param, grad, m, v, lr, b1, b2, eps, step, wd,
                                         decoupled, l1, MASK)

    def decay_and_regularise(p, grad):
        """(param after decoupled decay, gradient after L2) for one step."""
        if decoupled:
            return p - lr * wd * p * MASK, grad
        return p, grad + MASK * wd * p

    p0, g1 = decay_and_regularise(P0, G1)
    m1 = (1 - b1) * g1
    v1 = (1 - b2) * g1**2
    # Bias correction exactly undoes the (1 - beta) factors on step one.
    p1 = shrink_by_hand(p0 - lr * g1 / (np.abs(g1) + eps), lr * l1)

    p1, g2 = decay_and_regularise(p1, G2)
    m2 = b1 * m1 + (1 - b1) * g2
    v2 = b2 * v1 + (1 - b2) * g2**2
    p2 = shrink_by_hand(p1 - lr * (m2 / (1 - b1**2)) / (np.sqrt(v2 / (1 - b2**2)) + eps),
                        lr * l1)

    np.testing.assert_allclose(param, p2, rtol=1e-12)
    np.testing.assert_allclose(m, m2, rtol=1e-12)
    np.testing.assert_allclose(v, v2, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_first_step_moves_by_lr(backend):
    # A textbook property independent of our formula layout: step one is lr * sign(g).
    param = P0.copy()
    kernels.get(backend).adam_update(param, G1, np.zeros(3), np.zeros(3), 0.01, 0.9,
                                     0.999, 1e-12, 1, 0.0, False, 0.0, MASK)
    np.testing.assert_allclose(P0 - param, 0.01 * np.sign(G1), rtol=1e-8)


# --- L1 as a proximal step --------------------------------------------------------

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
L1_LR, L1 = 0.1, 0.01  # the shrink per step, lr * l1, is 1e-3


def optimizer_step(module, name, param, grad, state, weight_decay, l1, mask):
    """One step of optimizer ``name`` (step 1, so Adam's state starts at zero)."""
    first, second = state
    if name in ("adam", "adamw"):
        module.adam_update(param, grad, first, second, L1_LR, 0.9, 0.999, 1e-8, 1,
                           weight_decay, name == "adamw", l1, mask)
    else:
        module.sgd_update(param, grad, first, L1_LR, 0.0 if name == "sgd" else 0.9,
                          name == "nesterov", weight_decay, l1, mask)


def soft_threshold(q, shrink, mask):
    """``sign(q) * max(|q| - shrink, 0)`` on the weights (mask 1), ``q`` on the rest."""
    return np.where(mask == 1, np.sign(q) * np.maximum(np.abs(q) - shrink, 0), q)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_l1_puts_weights_near_zero_exactly_at_zero(backend, dtype, name):
    # +-1e-21 is what a weight that should be 0 holds after a sum whose order decides the
    # rounding (it differs with the rank count). A subgradient sends these two a whole
    # lr * l1 apart; the proximal step puts both at 0, as it does any weight within
    # lr * l1 of 0 after the gradient step (here the gradient is 0).
    param = np.array([1e-21, -1e-21, 4e-4, -6e-4, 1e-21, -1e-21], dtype)
    mask = np.array([1, 1, 1, 1, 0, 0], dtype=np.uint8)
    state = np.zeros(6, dtype), np.zeros(6, dtype)
    optimizer_step(kernels.get(backend), name, param, np.zeros(6, dtype), state, 0.0, L1,
                   mask)
    np.testing.assert_array_equal(param[:4], 0)
    # Biases are never shrunk: the two at +-1e-21 keep their values to the bit.
    np.testing.assert_array_equal(param[4:], np.array([1e-21, -1e-21], dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_l1_keeps_diverged_weights_visible(backend, name):
    # The shrink must not turn NaN into 0, or a diverged run would look sparse.
    param = np.array([np.nan, 0.5])
    optimizer_step(kernels.get(backend), name, param, np.zeros(2),
                   (np.zeros(2), np.zeros(2)), 0.0, L1, np.ones(2, dtype=np.uint8))
    assert np.isnan(param[0]) and param[1] == 0.5 - L1_LR * L1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("weight_decay", (0.0, 1e-2))
def test_l1_is_a_soft_threshold_after_the_usual_update(backend, dtype, name, weight_decay):
    module = kernels.get(backend)
    param, (grad, *_), mask = _flat_problem(dtype, 37, seed=11)
    grad = np.concatenate([grad, np.array([0.2, -0.3, 0.2], dtype)])
    param = np.concatenate([param, np.array([0.5, -0.7, 0.5], dtype)])
    mask = np.concatenate([mask, np.array([1, 1, 0], dtype=np.uint8)])
    plain, shrunk = both(param)
    plain_state = np.zeros_like(param), np.zeros_like(param)
    shrunk_state = np.zeros_like(param), np.zeros_like(param)
    optimizer_step(module, name, plain, grad, plain_state, weight_decay, 0.0, mask)
    optimizer_step(module, name, shrunk, grad, shrunk_state, weight_decay, L1, mask)

    # The shrink is lr * l1 rounded once to the dtype (a Python float product, then cast).
    shrink = np.dtype(dtype).type(L1_LR * L1)
    far = (mask == 1) & (np.abs(plain) > shrink)
    assert far.sum() > 20  # most weights move by exactly the shrink towards 0
    np.testing.assert_array_equal(shrunk[far], plain[far] - np.sign(plain[far]) * shrink)
    np.testing.assert_array_equal(shrunk, soft_threshold(plain, shrink, mask))
    np.testing.assert_array_equal(shrunk[mask == 0], plain[mask == 0])  # biases untouched
    # Momentum and Adam's moments see the loss (and L2) gradient only.
    for got, want in zip(shrunk_state, plain_state):
        np.testing.assert_array_equal(got, want)
