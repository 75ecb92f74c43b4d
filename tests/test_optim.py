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
