"""Full-batch L-BFGS / OWL-QN without MPI: the line search, the vector arithmetic, and
the solver against SciPy on the same formula.

    $ .venv/bin/python -m pytest -q tests/test_lbfgs.py
"""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.optimize import minimize

from algorithms_for_tests import logistic_data
from mpi_dml import models
from mpi_dml.algorithms.lbfgs import LBFGS
from mpi_dml.algorithms.line_search import (
    ACCEPT, C1, C2, CONTINUE, MAX_EVALUATIONS, Backtracking, StrongWolfe, cubic_minimizer)
from mpi_dml.algorithms.quasi_newton import (
    constrain, orthant, project, pseudo_gradient, two_loop)
from mpi_dml.devices.cpu import CpuDevice
from mpi_dml.kernels import get as get_kernels

# --- the line search on plain functions ------------------------------------------------
def _mt3(t, beta=0.01, waves=39):
    """Moré and Thuente's third function: a kinked line with many small wiggles."""
    if t <= 1 - beta:
        base, slope = 1 - t, -1.0
    elif t >= 1 + beta:
        base, slope = t - 1, 1.0
    else:
        base, slope = (t - 1) ** 2 / (2 * beta) + beta / 2, (t - 1) / beta
    k = waves * math.pi / 2
    return (base + 2 * (1 - beta) / (waves * math.pi) * math.sin(k * t),
            slope + (1 - beta) * math.cos(k * t))


# phi(t) and phi'(t) along a descent direction; Moré and Thuente's first three test
# functions (ACM TOMS 20, 1994) and a narrow quadratic whose minimum is far from t = 1.
FUNCTIONS = {
    "more_thuente_1": (lambda t: -t / (t * t + 2.0), lambda t: (t * t - 2.0) / (t * t + 2.0) ** 2),
    "more_thuente_2": (lambda t: (t + 0.004) ** 5 - 2.0 * (t + 0.004) ** 4,
                       lambda t: 5.0 * (t + 0.004) ** 4 - 8.0 * (t + 0.004) ** 3),
    "more_thuente_3": (lambda t: _mt3(t)[0], lambda t: _mt3(t)[1]),
    "quadratic": (lambda t: 50.0 * (t - 1e-3) ** 2, lambda t: 100.0 * (t - 1e-3)),
}


def search(phi, dphi, step, kind=StrongWolfe):
    s = kind(phi(0.0), dphi(0.0), step)
    trials = []
    while True:
        trials.append(s.step)
        status = s.observe(phi(s.step), dphi(s.step))
        if status != CONTINUE:
            return s, status, trials


@pytest.mark.parametrize("name", [n for n in FUNCTIONS if n != "more_thuente_3"])
@pytest.mark.parametrize("step", [1e-3, 1e-1, 1.0, 10.0, 1e3])
def test_the_accepted_step_meets_the_strong_wolfe_conditions(name, step):
    phi, dphi = FUNCTIONS[name]
    s, status, trials = search(phi, dphi, step)
    assert status == ACCEPT
    t = s.step
    assert t == trials[-1]  # the last point evaluated: the solver holds its gradient
    assert phi(t) <= phi(0) + C1 * t * dphi(0)
    assert abs(dphi(t)) <= C2 * abs(dphi(0))
    assert len(trials) <= 16  # function 2 is nearly flat at 0: a near-exact search


def test_a_wiggly_function_still_decreases_enough():
    # Moré-Thuente 3 has many local minima along the line: the search must end at a
    # point that decreases enough, within its budget.
    phi, dphi = FUNCTIONS["more_thuente_3"]
    s, status, trials = search(phi, dphi, 1e-3)
    assert status == ACCEPT and len(trials) <= MAX_EVALUATIONS + 1
    assert phi(s.step) <= phi(0) + C1 * s.step * dphi(0)


def test_a_search_resumes_from_its_state_with_the_same_trials():
    phi, dphi = FUNCTIONS["more_thuente_2"]
    _, _, whole = search(phi, dphi, 1e3)
    s = StrongWolfe(phi(0.0), dphi(0.0), 1e3)
    for _ in range(3):
        s.observe(phi(s.step), dphi(s.step))
    # Through JSON, as a checkpoint stores it (infinity becomes null).
    state = json.loads(json.dumps({k: (None if v == math.inf else v)
                                   for k, v in s.state().items()}))
    resumed = StrongWolfe.restore(state)
    rest = [resumed.step]
    while resumed.observe(phi(resumed.step), dphi(resumed.step)) == CONTINUE:
        rest.append(resumed.step)
    assert whole == whole[:3] + rest


def test_a_search_that_finds_no_decrease_fails():
    # A direction that only rises (a wrong slope): nothing decreases, whatever the step.
    s = StrongWolfe(1.0, -1.0, 1.0)
    status = CONTINUE
    while status == CONTINUE:
        status = s.observe(1.0 + s.step, 1.0)
    assert status == "failed" and s.evaluations <= MAX_EVALUATIONS


def test_an_overflow_shrinks_the_step():
    phi, dphi = FUNCTIONS["quadratic"]
    s = StrongWolfe(phi(0.0), dphi(0.0), 1.0)
    assert s.observe(math.inf, math.nan) == CONTINUE and s.step < 1.0


def test_backtracking_halves_until_enough_decrease():
    s = Backtracking(1.0, 1.0)
    assert s.observe(0.99999, -1.0) == CONTINUE and s.step == 0.5  # 1e-5 < c1 * 1
    assert s.observe(0.9, -0.5) == ACCEPT and s.step == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_cubic_minimizer_is_exact_on_a_cubic(seed):
    rng = np.random.default_rng(seed)
    r1, r2 = np.sort(rng.normal(size=2) * 3)  # stationary points; the minimum is r2
    p = np.poly1d(np.polyint(np.poly1d([1.0, -(r1 + r2), r1 * r2]) * rng.uniform(0.5, 2)))
    minimum = r2
    a, b = minimum - 0.3 * (r2 - r1), minimum + 0.7
    got = cubic_minimizer(a, p(a), p.deriv()(a), b, p(b), p.deriv()(b))
    assert got == pytest.approx(minimum, rel=1e-9, abs=1e-9)


# --- the vector arithmetic -------------------------------------------------------------
def test_two_loop_is_the_bfgs_inverse_hessian_of_the_pairs():
    rng = np.random.default_rng(0)
    n, m = 7, 4
    a = rng.normal(size=(n, n))
    hessian = a @ a.T + n * np.eye(n)
    s = rng.normal(size=(m, n))
    y = s @ hessian  # pairs of a quadratic: y = A s
    grad = rng.normal(size=n)
    # Nocedal and Wright (6.17) from H0 = gamma I, oldest pair first.
    gamma = s[m - 1] @ y[m - 1] / (y[m - 1] @ y[m - 1])
    h = gamma * np.eye(n)
    for j in range(m):
        rho = 1.0 / (y[j] @ s[j])
        left = np.eye(n) - rho * np.outer(s[j], y[j])
        h = left @ h @ left.T + rho * np.outer(s[j], s[j])
    got = two_loop(grad, s, y, order=list(range(m - 1, -1, -1)))  # newest first
    np.testing.assert_allclose(got, -h @ grad, rtol=1e-10, atol=1e-12)


def test_pseudo_gradient_is_the_steepest_one_sided_slope():
    rng = np.random.default_rng(1)
    l1 = 0.3
    x = np.array([0.5, -0.2, 0.0, 0.0, 0.0, 0.0, 1.0])
    grad = np.array([0.1, 0.1, 0.5, -0.5, 0.2, -0.1, 0.05])
    mask = np.array([1, 1, 1, 1, 1, 1, 0], dtype=np.uint8)
    pg = pseudo_gradient(x, grad, l1, mask)

    def f(v):  # a function whose gradient at x is grad, plus the L1 term
        return grad @ v + l1 * np.abs(v * mask).sum() + 0.5 * rng.uniform() * 0

    h = 1e-7
    for i in range(len(x)):
        e = np.zeros_like(x)
        e[i] = h
        right = (f(x + e) - f(x)) / h
        left = (f(x) - f(x - e)) / h
        # The steepest descent side: the right slope when it is negative, the left one
        # when it is positive, else 0 (x_i = 0 is a minimum along axis i).
        want = right if right < 0 else left if left > 0 else 0.0
        assert pg[i] == pytest.approx(want, abs=1e-6), i


def test_orthant_projection_and_constraint():
    x = np.array([1.0, -1.0, 0.0, 0.0, 2.0])
    pg = np.array([0.5, 0.5, -0.3, 0.3, 1.0])
    mask = np.array([1, 1, 1, 1, 0], dtype=np.uint8)
    signs = orthant(x, pg, mask)
    np.testing.assert_array_equal(signs, [1, -1, 1, -1, 0])
    moved = np.array([-0.5, -2.0, 0.4, 0.1, -3.0])  # crossed, stayed, stayed, crossed, free
    np.testing.assert_array_equal(project(moved, signs, mask), [0, -2.0, 0.4, 0, -3.0])
    d = np.array([-1.0, 1.0, 1.0, 1.0, -1.0])  # along -pg, against, along, against, along
    np.testing.assert_array_equal(constrain(d, pg), [-1.0, 0, 1.0, 0, -1.0])


# --- the solver, driven round by round as the engine does on one rank ------------------
def solver(x, y, **settings):
    values = dict(weight_decay=1e-2, l1=0.0, tol=1e-12, max_iter=500, history=10,
                  warm_start_epochs=0)
    values.update(settings)
    model = models.build_model("logistic", "classification", x.shape[1], 2)
    dev = CpuDevice(None, np.float64, get_kernels("reference"))
    params = np.zeros(model.size)
    return LBFGS(SimpleNamespace(**values), model, dev, params, n_train=len(y)), model


def run(algo, x, y, rounds=None):
    buf = np.zeros(algo.buffer_size())
    labels = algo.model.labels(y, np.float64)
    done = 0
    while (request := algo.next_request()) is not None and (rounds is None or done < rounds):
        algo.contribute(request, (x, labels), buf)
        algo.apply(request, buf, len(y))
        done += 1
    return algo


def objective(x, y, w, b, wd, l1=0.0):
    z = x @ w + b
    return np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * wd * w @ w + l1 * np.abs(w).sum()


def weights(model, params):
    named = model.named(params)
    return named["layers.0.weight"][:, 0], float(named["layers.0.bias"][0])


def scipy_optimum(x, y, wd, l1):
    """SciPy's L-BFGS-B on the smooth split form w = u - v, u, v >= 0, exact for L1."""
    d = x.shape[1]

    def f(v):
        w, b = v[:d] - v[d:2 * d], v[2 * d]
        z = x @ w + b
        r = 1.0 / (1.0 + np.exp(-z)) - y
        gw = x.T @ r / len(y) + wd * w
        value = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * wd * w @ w + l1 * v[:2 * d].sum()
        return value, np.concatenate([gw + l1, -gw + l1, [r.mean()]])

    res = minimize(f, np.zeros(2 * d + 1), jac=True, method="L-BFGS-B",
                   bounds=[(0, None)] * (2 * d) + [(None, None)],
                   options=dict(ftol=1e-15, gtol=1e-13, maxiter=10000))
    return res.fun, res.x[:d] - res.x[d:2 * d]


@pytest.mark.parametrize("l1", [0.0, 0.02])
def test_the_optimum_matches_scipy(l1):
    x, y = logistic_data()
    x = (x - x.mean(0)) / x.std(0)
    x = np.hstack([x, x[:, :2] * 0.01])  # two weak features, which the L1 term zeroes
    algo, model = solver(x, y, l1=l1)
    run(algo, x, y)
    w, b = weights(model, algo.params)
    want, w_ref = scipy_optimum(x, y, 1e-2, l1)
    got = objective(x, y, w, b, 1e-2, l1)
    assert got == pytest.approx(want, rel=1e-10)
    assert got <= want + 1e-12
    assert algo.objective == pytest.approx(got, rel=1e-12)  # its own record is right
    if l1:  # OWL-QN reaches exact zeros, where the reference has them
        np.testing.assert_array_equal(w == 0, np.abs(w_ref) < 1e-9)
        assert (w == 0).sum() >= 2


@pytest.mark.parametrize("l1", [0.0, 0.02])
def test_a_restored_state_continues_bit_for_bit(l1):
    # Unscaled features: the first line searches need several evaluations, so some of
    # the stops below fall inside one.
    x, y = logistic_data()
    x = x * 10
    whole, _ = solver(x, y, l1=l1)
    run(whole, x, y)
    inside = 0
    for stop_after in (1, 2, 3, 5, 9):
        first, _ = solver(x, y, l1=l1)
        run(first, x, y, rounds=stop_after)
        arrays = {k: np.array(v) for k, v in first.arrays().items()}
        counters = json.loads(json.dumps(first.counters()))
        inside += counters["search.evaluations"] > 0
        second, _ = solver(x, y, l1=l1)
        second.restore(arrays, counters)
        run(second, x, y)
        np.testing.assert_array_equal(second.params, whole.params)
        assert second.iteration == whole.iteration and second.stop == whole.stop
    assert inside >= 1


def test_it_stops_at_max_iter_and_says_so():
    x, y = logistic_data()
    algo, _ = solver(x, y, max_iter=3)
    run(algo, x, y)
    assert algo.iteration == 3 and algo.period_record(2, [0])["stop"] == "max_iter"


def test_settings_lbfgs_does_not_use_are_named_once():
    from mpi_dml.config import LBFGS_TOL, TrainConfig, ignored_settings

    cfg = TrainConfig(optimizer="lbfgs", epochs=5, batch_size=32, lr=0.1, schedule="cosine")
    assert cfg.tol == LBFGS_TOL  # not given: L-BFGS's own default, not SGD's "off"
    notes = ignored_settings(cfg, {"epochs", "batch_size", "lr", "schedule", "history"})
    assert len(notes) == 2
    assert any("epochs" in n and "schedule" in n and "full passes" in n for n in notes)
    assert any("lr" in n and "batch_size" in n and "warm-start" in n for n in notes)
    warm = TrainConfig(optimizer="lbfgs", warm_start_epochs=2, lr=0.1)
    assert ignored_settings(warm, {"lr", "batch_size"}) == []
    assert TrainConfig(optimizer="lbfgs", tol=1e-4).tol == 1e-4


def test_progress_names_warm_start_epochs_and_iterations_apart():
    import io

    from mpi_dml.engine.progress import Progress

    out = io.StringIO()
    progress = Progress("lines", 3, 4, enabled=True, stream=out, period_name="iteration")
    progress.period(0, {"epoch": 0, "train_loss": 1.0})
    progress.period(0, {"iteration": 0, "train_loss": 0.5, "objective": 0.6})
    assert out.getvalue().splitlines() == [
        "epoch 1  loss 1.0000", "iteration 1/3  loss 0.5000  objective 0.6000"]


def test_an_mlp_is_driven_to_a_stationary_point_of_its_objective():
    """Not convex: the point depends on the start, but the objective's gradient (by
    finite differences of a NumPy forward pass) must vanish there."""
    from mpi_dml.api.run import fit_arrays
    from mpi_dml.config import TrainConfig
    from mpi_dml.data.arrays import LABEL

    x, y = logistic_data(n=200, d=3)
    x = (x - x.mean(0)) / x.std(0)
    wd = 1e-2
    cfg = TrainConfig(model="mlp", hidden=(4,), activation="tanh", optimizer="lbfgs",
                      weight_decay=wd, dtype="float64", tol=1e-13, max_iter=1000,
                      label_column=LABEL, progress="none", device="cpu", seed=5)
    engine = fit_arrays(cfg, x, y)
    named = engine.model.named(engine.params)
    shapes = [(k, named[k].shape) for k in ("layers.0.weight", "layers.0.bias",
                                            "layers.1.weight", "layers.1.bias")]

    def f(flat):
        parts, at = {}, 0
        for key, shape in shapes:
            size = int(np.prod(shape))
            parts[key], at = flat[at:at + size].reshape(shape), at + size
        h = np.tanh(x @ parts["layers.0.weight"] + parts["layers.0.bias"])
        z = h @ parts["layers.1.weight"] + parts["layers.1.bias"]
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -np.mean(log_p[np.arange(len(y)), y.astype(int)])
        w = np.concatenate([parts["layers.0.weight"].ravel(), parts["layers.1.weight"].ravel()])
        return loss + 0.5 * wd * w @ w

    flat = np.concatenate([named[k].ravel() for k, _ in shapes])
    assert f(flat) == pytest.approx(engine.history[-1]["objective"], rel=1e-12)
    h = 1e-6
    grad = np.array([(f(flat + h * e) - f(flat - h * e)) / (2 * h) for e in np.eye(flat.size)])
    assert np.linalg.norm(grad) <= 1e-6
    assert engine.history[-1]["objective"] < engine.history[0]["objective"]


@pytest.mark.parametrize("change,message", [
    ({"history": 5}, r"with history 10; this run has 5 \(.*resume with --history 10\)"),
    ({"warm_start_epochs": 2},
     r"with warm_start_epochs 0; this run has 2 \(.*resume with --warm-start-epochs 0\)"),
    ({"weight_decay": 1e-3}, r"with weight_decay 0.0; this run has 0.001"),
    ({"l1": 1e-3}, r"with l1 0.0; this run has 0.001 \(.*resume with --l1 0.0\)"),
])
def test_a_resume_that_changes_what_the_solvers_state_means_is_refused(change, message):
    from test_checkpoint import describe, make_cfg, make_state

    from mpi_dml.engine.compatibility import check_compatible
    from mpi_dml.errors import UserError

    state = make_state(make_cfg(optimizer="lbfgs"))
    cfg = make_cfg(optimizer="lbfgs", **change)
    _, model_desc, data = describe(cfg)
    with pytest.raises(UserError, match=message):
        check_compatible(state, cfg, model_desc, data, "c.safetensors")


def test_a_failed_search_along_the_history_retries_steepest_descent():
    x, y = logistic_data()
    algo, _ = solver(x, y)
    run(algo, x, y, rounds=6)
    assert algo.pairs > 0 and not algo.done
    # As if the search along the quasi-Newton direction found no decrease.
    algo._failed()
    assert algo.pairs == 0 and not algo.done
    np.testing.assert_array_equal(algo.direction, -algo.grad)
    algo._failed()  # again, along steepest descent: the point is final
    assert algo.done and algo.period_record(0, [0])["stop"] == "no_decrease"


def least_squares_model(d, nan_at=None):
    """A custom model (``mpi_dml.CustomModel``): least squares with a bias; with
    ``nan_at``, that call of ``loss_grad`` returns NaN, as an overflow would."""
    import mpi_dml

    class LeastSquares(mpi_dml.CustomModel):
        size = d + 1
        calls = 0

        def loss_grad(self, params, grad, X, y):
            LeastSquares.calls += 1
            r = X @ params[:d] + params[d] - y
            grad[:d], grad[d] = X.T @ r, r.sum()
            if LeastSquares.calls == nan_at:
                grad[0] = np.nan
            return 0.5 * float(r @ r)

        def decay_mask(self):
            return np.append(np.ones(d, np.uint8), 0)

    return LeastSquares()


def ridge_rows():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 4)) * [1.0, 2.0, 0.5, 3.0]
    return x, x @ [0.5, -1.0, 2.0, 0.1] + 0.3 + rng.normal(size=120) * 0.1


def test_a_custom_model_solved_by_lbfgs_is_ridge_in_closed_form():
    import mpi_dml

    LeastSquares = lambda d: least_squares_model(d)  # noqa: E731
    x, y = ridge_rows()
    alpha = 0.05
    result = mpi_dml.train(LeastSquares(4), x, y, solver="lbfgs", alpha=alpha,
                           max_iter=200, tol=1e-14)
    # None (as for the other settings) leaves L-BFGS its own stopping rule.
    assert mpi_dml.train(LeastSquares(4), x, y, solver="lbfgs", alpha=alpha,
                         tol=None).history[-1]["stop"] in ("gradient", "objective")
    a = np.column_stack([x, np.ones(len(x))])
    penalty = np.diag([alpha] * 4 + [0.0])
    want = np.linalg.solve(a.T @ a / len(x) + penalty, a.T @ y / len(x))
    np.testing.assert_allclose(result.params, want, rtol=1e-9, atol=1e-12)
    assert result.n_iter == len(result.history) < 200


def test_the_solvers_scalars_do_not_depend_on_blas_threads():
    """Ranks may run with different thread counts (nodes of other sizes); the solver's
    dot products must give every rank the same bits, or the iterates drift apart."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(7)
    n, m = 300_000, 3
    grad = rng.normal(size=n)
    s = rng.normal(size=(m, n))
    y = s * rng.uniform(0.5, 2.0, size=n)
    results = []
    for threads in (1, 2):
        with threadpool_limits(threads):
            results.append(two_loop(grad, s, y, order=[2, 1, 0]))
    np.testing.assert_array_equal(results[0], results[1])


def test_an_svm_folder_from_before_the_loss_setting_loads_as_hinge():
    from mpi_dml.api.est_params import params_from_config
    from mpi_dml.api.estimators import LinearSVC

    accepted = LinearSVC._get_param_names()
    old = {"model": "svm", "optimizer": "adam", "epochs": 5, "weight_decay": 1e-3}
    assert params_from_config(old, accepted)["loss"] == "hinge"
    new = {**old, "loss": "auto", "optimizer": "lbfgs", "max_iter": 50}
    assert params_from_config(new, accepted)["loss"] == "squared_hinge"


def test_a_non_finite_trial_is_stepped_back_from_or_stops_with_a_hint():
    import mpi_dml
    from mpi_dml.errors import TrainingFailed

    x, y = ridge_rows()
    a = np.column_stack([x, np.ones(len(x))])
    want = np.linalg.solve(a.T @ a / len(x) + np.diag([0.05] * 4 + [0.0]), a.T @ y / len(x))
    # The third evaluation (a line search's trial) comes back NaN: skipped, the search
    # shrinks its step and the solve ends at the optimum all the same.
    skipped = mpi_dml.train(least_squares_model(4, nan_at=3), x, y, solver="lbfgs",
                            alpha=0.05, tol=1e-14, nonfinite="skip")
    np.testing.assert_allclose(skipped.params, want, rtol=1e-7)
    with pytest.raises(TrainingFailed, match="pass --nonfinite skip to let the line search"):
        mpi_dml.train(least_squares_model(4, nan_at=3), x, y, solver="lbfgs", alpha=0.05)
