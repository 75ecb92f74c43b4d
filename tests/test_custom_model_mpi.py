"""Custom models through ``mpi_dml.train``: every guarantee of the built-in models.

    $ .venv/bin/python -m pytest -q tests/test_custom_model_mpi.py
    $ .venv/bin/python -m pytest -q tests/test_custom_model_mpi.py -m "not mpi"   # in-process

What each result is compared against, all computed here:

* a plain NumPy replay of minibatch SGD/Adam written from the documented update rules
  (``kernels/reference.py``'s docstrings), taking only the batch plan from the engine
  (``sharding.EpochPlan``): in this process, and for 1-4 ranks under mpiexec;
* scikit-learn's ``PoissonRegressor(alpha=0)`` for ``examples/custom_model.py``;
* finite differences for the gradients of the models used here;
* for stops: the step in every rank's ``Preempted`` message, the checkpoint file of
  that step, and the replay of the whole run after a resume on another rank count;
* for a NaN gradient: the step and rank that the batch plan puts the bad row in.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import RANKS, ROOT, run_mpi
from mpi_dml.api.custom import CustomModel, EngineModel, train
from mpi_dml.data import sharding
from mpi_dml.errors import AgreedError

SCRIPT = ROOT / "tests" / "mpi_scripts" / "custom_train.py"
EXAMPLE = ROOT / "examples" / "custom_model.py"
RTOL = 1e-6  # across rank counts and against the replay, float64
FLOOR = 1e-8


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


script = load(SCRIPT, "custom_train_script")
example = load(EXAMPLE, "custom_model_example")


def relative(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), FLOOR)))


# --- the replay ----------------------------------------------------------------------
def learning_rate(step, lr, schedule, total, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "cosine":
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return lr * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def replay(model, x, y, *, epochs, solver="sgd", learning_rate_init=0.01, batch_size=200,
           random_state=0, alpha=0.0, l1=0.0, momentum=0.0, nesterovs_momentum=False,
           beta_1=0.9, beta_2=0.999, epsilon=1e-8, schedule="constant", warmup_steps=0,
           shards=131072):
    """The documented algorithm in NumPy: batch k of epoch e is the rows the plan puts
    there; gradient = sum / rows in the batch + alpha * mask * p; SGD (PyTorch-style
    momentum) or Adam; then L1's soft threshold on the masked parameters."""
    n = len(x)
    sizes = np.diff(sharding.shard_bounds(n, sharding.shard_count(n, shards)))
    p = np.zeros(model.size)
    model.init(p, random_state)
    mask = model.decay_mask().astype(float)
    v, m, s = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    steps = -(-n // batch_size)
    t = 0
    for epoch in range(epochs):
        plan = sharding.EpochPlan(sizes, np.arange(sizes.size), seed=random_state,
                                  epoch=epoch, batch_size=batch_size)
        for k in range(steps):
            rows = plan.local_indices(k)
            g = np.zeros_like(p)
            model.loss_grad(p, g, x[rows], y[rows])
            g = g / len(rows) + alpha * mask * p
            lr = learning_rate(t, learning_rate_init, schedule, steps * epochs, warmup_steps)
            if solver == "sgd":
                v = momentum * v + g
                p = p - lr * (g + momentum * v if nesterovs_momentum else v)
            else:
                m = beta_1 * m + (1 - beta_1) * g
                s = beta_2 * s + (1 - beta_2) * g * g
                p = p - lr * (m / (1 - beta_1 ** (t + 1))) / (
                    np.sqrt(s / (1 - beta_2 ** (t + 1))) + epsilon)
            p = np.where(mask > 0, np.sign(p) * np.maximum(np.abs(p) - lr * l1, 0), p)
            t += 1
    return p


def huber_data():
    return script.make_rows(0, script.N_ROWS)


@pytest.fixture(scope="module")
def huber_replay():
    x, y = huber_data()
    return replay(script.Huber(script.N_FEATURES), x, y, epochs=4, **script.SETTINGS)


# --- in this process -------------------------------------------------------------------
@pytest.mark.parametrize("settings", [
    dict(script.SETTINGS, max_iter=4),
    dict(solver="adam", learning_rate_init=0.02, alpha=1e-2, l1=1e-3, batch_size=50,
         schedule="cosine", warmup_steps=5, random_state=9, max_iter=3, shards=100),
], ids=["sgd-nesterov-l2-l1", "adam-cosine-warmup"])
def test_train_matches_the_numpy_replay(settings):
    x, y = huber_data()
    result = train(script.Huber(script.N_FEATURES), x, y, **settings)
    settings = dict(settings)
    expected = replay(script.Huber(script.N_FEATURES), x, y,
                      epochs=settings.pop("max_iter"), **settings)
    assert relative(result.params, expected) <= 1e-10
    assert result.n_iter == len(result.loss_curve) == len(result.history)
    assert all(np.isfinite(result.loss_curve))


@pytest.mark.parametrize("model, data", [
    (script.Huber(4), lambda rng: (rng.normal(size=(30, 4)), rng.normal(size=30) * 3)),
    (example.PoissonRegression(3), lambda rng: (rng.normal(size=(30, 3)) * 0.5,
                                                rng.poisson(2.0, 30).astype(float))),
], ids=["huber", "poisson"])
def test_gradients_match_finite_differences(model, data):
    rng = np.random.default_rng(0)
    x, y = data(rng)
    p = rng.normal(scale=0.3, size=model.size)
    grad = np.zeros_like(p)
    model.loss_grad(p, grad, x, y)
    h = 1e-6
    for i in range(model.size):
        e = np.zeros_like(p)
        e[i] = h
        up, down = np.zeros_like(p), np.zeros_like(p)
        numeric = (model.loss_grad(p + e, up, x, y) - model.loss_grad(p - e, down, x, y)) / (2 * h)
        assert abs(numeric - grad[i]) <= 1e-6 * max(1.0, abs(grad[i]))


def test_the_adapter_zeroes_skips_and_protects():
    seen = []

    class Adds(CustomModel):
        size = 3

        def loss_grad(self, params, grad, X, y):
            seen.append(X.shape[0])
            grad += 1.0  # adding works because the gradient arrives zeroed
            return float(X.shape[0])

    adapter = EngineModel(Adds(), np.zeros(3), np.array([1, 1, 0], dtype=np.uint8))
    grads = np.full(3, 7.0)
    assert adapter.loss_grad(np.zeros(3), grads, np.ones((2, 1)), np.zeros(2)) == (2.0, 0)
    np.testing.assert_array_equal(grads, [1.0, 1.0, 1.0])
    assert adapter.loss_grad(np.zeros(3), grads, np.ones((0, 1)), np.zeros(0)) == (0.0, 0)
    assert seen == [2] and not grads.any()  # no call on zero rows, the gradient is 0

    class Writes(CustomModel):
        size = 2

        def loss_grad(self, params, grad, X, y):
            params[0] = 1.0
            return 0.0

    with pytest.raises(ValueError, match="read-only"):
        EngineModel(Writes(), np.zeros(2), np.ones(2, np.uint8)).loss_grad(
            np.zeros(2), np.zeros(2), np.ones((1, 1)), np.zeros(1))
    described = adapter.describe()
    assert described["kind"] == "custom" and described["class"].endswith("Adds")
    assert list(adapter.named(np.zeros(3))) == ["params"]


class NoSize:
    def loss_grad(self, params, grad, X, y):
        return 0.0


class Pair(CustomModel):
    size = 2

    def loss_grad(self, params, grad, X, y):
        return 1.0, 2.0


class BadMask(CustomModel):
    size = 3

    def decay_mask(self):
        return np.ones(2)

    def loss_grad(self, params, grad, X, y):
        return 0.0


class NanInit(CustomModel):
    size = 2

    def init(self, params, seed):
        params[1] = np.nan

    def loss_grad(self, params, grad, X, y):
        return 0.0


class Raises(CustomModel):
    size = 2

    def loss_grad(self, params, grad, X, y):
        return float((X @ np.ones(3)).sum())  # wrong shape: fails on the first row


X4, Y4 = np.ones((8, 2)), np.zeros(8)


@pytest.mark.parametrize("model, x, kwargs, message", [
    (Pair(), X4, dict(learning_rate_init=-1),
     r"The 'learning_rate_init' parameter of mpi_dml\.train must be > 0\. Got -1\.0 instead\."),
    (Pair(), X4, dict(solver="newton"),
     r"The 'solver' parameter of mpi_dml\.train must be one of sgd, adam, adamw, lbfgs\. "
     r"Got 'newton'"),
    (Pair(), X4, dict(max_iter=0), r"The 'max_iter' parameter of mpi_dml\.train must be >= 1"),
    (Pair(), X4, dict(batch_size="ten"),
     r"The 'batch_size' parameter of mpi_dml\.train must be of type int\. Got 'ten'"),
    (Pair(), X4, dict(checkpoint_every=5),
     r"The 'checkpoint_every' parameter of mpi_dml\.train must come with checkpoint_dir"),
    (Pair(), X4, dict(resume="auto"),
     r"The 'resume' parameter of mpi_dml\.train must come with checkpoint_dir"),
    (NoSize(), X4, {}, r"The 'model' parameter of mpi_dml\.train must have a 'size'"),
    (Pair(), X4, {}, r"Pair\.loss_grad must return the summed loss as one real number\. "
                     r"Got tuple \(1\.0, 2\.0\) instead\."),
    (BadMask(), X4, {}, r"BadMask\.decay_mask\(\) must return 3 values of 0 or 1"),
    (NanInit(), X4, {}, r"NanInit\.init left non-finite initial parameters \(at index 1\)"),
    (Raises(), X4, {}, r"Raises\.loss_grad\(params, grad, X, y\) failed on the first row of "
                       r"this rank: ValueError"),
    (Pair(), np.ones(8), {}, r"The 'X' parameter of mpi_dml\.train must be 2-D"),
    (Pair(), X4[:5], {}, r"The 'y' parameter of mpi_dml\.train must hold one value for each "
                         r"of the 5 rows of X\. Got an array of shape \(8,\) instead\."),
])
def test_bad_input_is_one_message_naming_it(model, x, kwargs, message):
    with pytest.raises(AgreedError, match=message):
        train(model, x, Y4, **kwargs)


def test_checkpoint_folder_holds_checkpoints_metrics_and_the_final_params(tmp_path):
    x, y = huber_data()
    settings = dict(script.SETTINGS, max_iter=3, checkpoint_dir=tmp_path, checkpoint_every=7)
    result = train(script.Huber(script.N_FEATURES), x, y, **settings)
    steps = 3 * math.ceil(len(x) / settings["batch_size"])
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.safetensors"))
    assert kept == [f"ckpt-{s:09d}.safetensors" for s in range(7, steps + 1, 7)][-3:]
    np.testing.assert_array_equal(load_file(tmp_path / "model.safetensors")["params"],
                                  result.params)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["train_loss"] for l in lines] == pytest.approx(result.loss_curve)
    # Another fresh run there would mix two runs' checkpoints: refused, as the CLI does.
    with pytest.raises(AgreedError, match="already holds checkpoints"):
        train(script.Huber(script.N_FEATURES), x, y, **settings)


def test_result_predicts_with_the_model():
    x, y = huber_data()
    result = train(script.Huber(script.N_FEATURES), x, y, max_iter=1)
    np.testing.assert_allclose(result.predict(x[:5]), x[:5] @ result.params[:-1]
                               + result.params[-1])


# --- under mpiexec --------------------------------------------------------------------
def run_script(n, out, *args, expect=0):
    result = run_mpi(n, [SCRIPT, out, *args])
    assert result.returncode == expect, result.stderr
    return [json.loads((out.parent / f"{out.name}.rank{r}.json").read_text())
            for r in range(n)], result


@pytest.mark.mpi
def test_same_params_on_any_rank_count_as_the_replay(tmp_path, huber_replay):
    worst = 0.0
    for n in RANKS:
        ranks, _ = run_script(n, tmp_path / f"n{n}")
        for r in ranks:  # every rank ends with the same parameters, bit for bit
            assert r["params"] == ranks[0]["params"] and r["n_iter"] == 4
        worst = max(worst, relative(ranks[0]["params"], huber_replay))
    assert worst <= RTOL


@pytest.mark.mpi
@pytest.mark.parametrize("n", RANKS)
def test_a_stopped_run_resumes_on_another_rank_count(tmp_path, huber_replay, n):
    """SIGTERM to the last rank in its 12th call: every rank stops after the same step,
    rank 0 writes that step's checkpoint, the script exits 75; the run then finishes on
    another number of ranks and ends where an uninterrupted run does."""
    folder = tmp_path / "run"
    ranks, result = run_script(n, tmp_path / "stopped", "--setup", "--checkpoint-dir", folder,
                               "--signal-rank", n - 1, "--signal-call", 12, expect=75)
    assert {r["error"] for r in ranks} == {"Preempted"}
    steps = {int(re.search(r"after step (\d+)", r["message"]).group(1)) for r in ranks}
    assert len(steps) == 1, ranks
    step = steps.pop()
    assert 11 <= step < 4 * 10  # after the signal (call 12 is step 11), before the end
    assert "stopped on SIGTERM after step" in ranks[-1]["message"]
    checkpoint = folder / "checkpoints" / f"ckpt-{step:09d}.safetensors"
    assert checkpoint.is_file()
    assert str(checkpoint) in (folder / "PREEMPTED").read_text()
    assert result.stderr.count("mpi_dml: stopped on SIG") == 1  # rank 0 speaks once

    m = n % 4 + 1
    ranks, _ = run_script(m, tmp_path / "resumed", "--checkpoint-dir", folder, "--resume", "auto")
    for r in ranks:
        assert r["params"] == ranks[0]["params"]
        assert r["n_iter"] == 4 and len(r["loss_curve"]) == 4
    assert relative(ranks[0]["params"], huber_replay) <= RTOL


def nan_step_and_rank(n, bad_row):
    """Where the batch plan puts global row ``bad_row`` in epoch 0 on ``n`` ranks."""
    sizes = np.diff(sharding.shard_bounds(script.N_ROWS, script.SETTINGS["shards"]))
    plan = sharding.EpochPlan(sizes, np.arange(sizes.size), seed=script.SETTINGS["random_state"],
                              epoch=0, batch_size=script.SETTINGS["batch_size"])
    step = next(k for k in range(plan.steps) if bad_row in plan.local_indices(k))
    bounds = sharding.shard_bounds(script.N_ROWS, sizes.size)
    shard = int(np.searchsorted(bounds, bad_row, side="right")) - 1
    base, extra = divmod(sizes.size, n)  # contiguous whole shards, the first ranks one more
    firsts = [r * base + min(r, extra) for r in range(n)] + [sizes.size]
    rank = next(r for r in range(n) if firsts[r] <= shard < firsts[r + 1])
    return step, rank


@pytest.mark.mpi
@pytest.mark.parametrize("n", RANKS)
def test_a_nan_gradient_stops_every_rank_naming_step_and_rank(tmp_path, n):
    bad_row = 437
    step, rank = nan_step_and_rank(n, bad_row)
    ranks, result = run_script(n, tmp_path / "nan", "--setup", "--nan-row", bad_row, expect=3)
    message = (f"non-finite gradient at step {step + 1} (epoch 1, batch {step + 1}) from "
               f"rank {rank} on ")
    for r in ranks:
        assert r["error"] == "TrainingFailed" and r["message"].startswith(message), r
    assert result.stderr.count("non-finite gradient at step") == 1


@pytest.mark.mpi
def test_settings_that_differ_between_ranks_are_refused(tmp_path):
    n = max(RANKS)
    if n == 1:
        pytest.skip("needs two ranks")
    ranks, _ = run_script(n, tmp_path / "uneven", "--uneven-lr", expect=1)
    for r in ranks:
        assert r["error"] == "AgreedError"
        assert r["message"] == ("mpi_dml.train is collective and needs the same setting "
                                "learning_rate_init on every rank: 0.05 on rank 0, 0.1 on "
                                "rank 1")


@pytest.fixture(scope="module")
def poisson_optimum():
    from sklearn.linear_model import PoissonRegressor

    x, y = example.make_rows(0, example.N_ROWS)
    fit = PoissonRegressor(alpha=0.0, tol=1e-12, max_iter=10_000).fit(x, y)
    eta = x @ fit.coef_ + fit.intercept_
    return np.r_[fit.coef_, fit.intercept_], float(np.mean(np.exp(eta) - y * eta))


@pytest.mark.mpi
def test_the_example_finds_the_poisson_optimum_on_any_rank_count(poisson_optimum):
    """Measured: 1.1e-4 from scikit-learn's optimum (largest parameter difference) and
    the last epoch's loss within 2e-7 of the optimal loss, at every rank count."""
    optimum, best_loss = poisson_optimum
    found = {}
    for n in RANKS:
        result = run_mpi(n, [EXAMPLE])
        assert result.returncode == 0, result.stderr
        found[n] = json.loads(result.stdout.strip().splitlines()[-1])
        assert np.max(np.abs(np.array(found[n]["params"]) - optimum)) <= 5e-4
        assert abs(found[n]["loss"] - best_loss) <= 1e-5 * best_loss
    first = found[RANKS[0]]["params"]
    assert max(relative(found[n]["params"], first) for n in RANKS) <= RTOL
