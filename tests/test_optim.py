"""Learning-rate schedules and the optimizer wrapper over flat buffers."""

import numpy as np
import pytest

from mpi_dml import kernels
from mpi_dml.config import TrainConfig
from mpi_dml.algorithms.optimizers import Optimizer
from mpi_dml.algorithms.schedules import learning_rate

COMMON = dict(lr=0.1, total_steps=100, steps_per_epoch=10)


def test_constant_with_warmup():
    lrs = [learning_rate(s, schedule="constant", warmup_steps=4, **COMMON) for s in range(6)]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_step_decays_every_step_epochs():
    lr = lambda s: learning_rate(s, schedule="step", step_epochs=2, gamma=0.5, **COMMON)
    assert [lr(0), lr(19), lr(20), lr(45)] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_cosine_runs_from_peak_to_zero():
    lr = lambda s: learning_rate(s, schedule="cosine", warmup_steps=10, **COMMON)
    assert lr(10) == pytest.approx(0.1)
    assert lr(55) == pytest.approx(0.05)
    assert lr(100) == pytest.approx(0.0, abs=1e-12)
    assert all(lr(s) >= lr(s + 1) for s in range(10, 99))


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0, schedule="linear", **COMMON)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizer_minimises_a_quadratic(name):
    cfg = TrainConfig(optimizer=name, momentum=0.9 if name == "sgd" else 0.0, dtype="float64")
    mask = np.ones(5, dtype=np.uint8)
    opt = Optimizer(cfg, mask, kernels.get("cpu"))
    target = np.arange(5.0)
    p = np.zeros(5)
    for _ in range(500):
        opt.step(p, p - target, 0.05)
    np.testing.assert_allclose(p, target, atol=1e-3)
    assert opt.step_count == 500


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_l1_reaches_the_lasso_solution_with_exact_zeros(momentum, nesterov):
    # 0.5 * (p - target)**2 + l1 * |p| is minimised by soft_threshold(target, l1). L1's
    # proximal step reaches it, zeros included; a subgradient would leave the small
    # targets' weights hopping lr * l1 either side of 0. The shrink is applied once per
    # step while the velocity carries 1 / (1 - momentum) gradients, so with momentum
    # the weights settle where the gradient is (1 - momentum) * l1, not l1.
    l1 = 0.5
    cfg = TrainConfig(optimizer="sgd", momentum=momentum, nesterov=nesterov, l1=l1,
                      dtype="float64")
    opt = Optimizer(cfg, np.ones(6, dtype=np.uint8), kernels.get("cpu"))
    target = np.array([-2.0, -0.3, -0.01, 0.04, 0.3, 2.0])
    p = np.zeros(6)
    for _ in range(2000):
        opt.step(p, p - target, 0.05)
    strength = (1 - momentum) * l1
    want = np.sign(target) * np.maximum(np.abs(target) - strength, 0)
    assert np.count_nonzero(want == 0) >= 2
    np.testing.assert_array_equal(p[want == 0], 0)
    np.testing.assert_allclose(p, want, rtol=1e-12, atol=0)


SCALE_CASES = {  # optimizer, momentum, nesterov, weight_decay, l1
    "sgd": ("sgd", 0.0, False, 1e-2, 1e-3),
    "nesterov": ("sgd", 0.9, True, 1e-2, 0.0),
    "adam": ("adam", 0.0, False, 1e-2, 1e-3),
    "adamw": ("adamw", 0.0, False, 5e-2, 0.0),
}


def _update(k, case, param, grad, state, step, mask, *scale):
    name, momentum, nesterov, weight_decay, l1 = SCALE_CASES[case]
    if name == "sgd":
        k.sgd_update(param, grad, state[0], 0.1, momentum, nesterov, weight_decay, l1, mask,
                     *scale)
    else:
        k.adam_update(param, grad, state[0], state[1], 1e-2, 0.9, 0.999, 1e-8, step,
                      weight_decay, name == "adamw", l1, mask, *scale)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", list(SCALE_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_updates_scale_the_summed_gradient_themselves(backend, case, dtype):
    """``grad_scale`` (1 / rows in the global batch) is applied inside the update: the
    same steps as the NumPy reference given the gradient already scaled, and the
    gradient buffer is only read."""
    rng = np.random.default_rng(7)
    n, count = 301, 96
    mask = (rng.random(n) < 0.7).astype(np.uint8)
    param = rng.standard_normal(n).astype(dtype)
    got, want = param.copy(), param.copy()
    state_got = [np.zeros(n, dtype), np.zeros(n, dtype)]
    state_want = [np.zeros(n, dtype), np.zeros(n, dtype)]
    k, ref = kernels.get(backend), kernels.get("reference")
    for step in range(1, 4):
        summed = (count * rng.standard_normal(n)).astype(dtype)
        before = summed.copy()
        _update(k, case, got, summed, state_got, step, mask, 1.0 / count)
        np.testing.assert_array_equal(summed, before)
        scaled = summed * dtype(1.0 / count)  # what the engine did to the buffer before
        _update(ref, case, want, scaled, state_want, step, mask)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(got, want, **tol)
    for s_got, s_want in zip(state_got, state_want):
        np.testing.assert_allclose(s_got, s_want, **tol)


def test_minibatch_apply_leaves_the_reduced_buffer_alone():
    """One pass over the gradient buffer fewer: no separate scaling by 1 / count."""
    from mpi_dml.algorithms.minibatch import Minibatch
    from mpi_dml.devices.cpu import CpuDevice
    from mpi_dml.models import build_model

    model = build_model("mlp", "classification", 4, 3, (5,), "tanh")
    cfg = TrainConfig(optimizer="sgd", momentum=0.9, lr=0.1, batch_size=8, epochs=1,
                      dtype="float64")
    params = np.zeros(model.size)
    model.init(params, 1)
    dev = CpuDevice(None, np.float64, kernels.get("reference"))
    algo = Minibatch(cfg.solver, model, dev, params, n_train=16)
    buffer = np.random.default_rng(0).standard_normal(model.size)
    reduced = buffer.copy()
    algo.apply(algo.next_request(), buffer, 8)
    np.testing.assert_array_equal(buffer, reduced)
    want, velocity = params.copy(), np.zeros(model.size)
    kernels.get("reference").sgd_update(want, reduced / 8, velocity, 0.1, 0.9, False, 0.0,
                                        0.0, model.decay_mask())
    np.testing.assert_allclose(algo.params, want, rtol=1e-15)
