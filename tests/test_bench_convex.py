"""bench_convex.py: its scoring formula, reference optimum, peer mappings and cost model
against independent references, and one ``--quick`` run end to end.

    $ python -m pytest -q tests/test_bench_convex.py
"""
from __future__ import annotations

import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import ROOT, mpi_env


def _bench_module(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


cp = _bench_module("convex_problems")


def _small(rows=3000, features=6, seed=0):
    data = cp.make_dense(rows, features, seed)
    return data.x, data.y


def test_objective_is_log_loss_plus_the_weight_penalty_and_its_derivatives_match():
    from scipy.optimize import approx_fprime
    from sklearn.metrics import log_loss

    x, y = _small()
    rng = np.random.default_rng(1)
    w, b, wd, l1 = rng.standard_normal(x.shape[1]), 0.3, 0.05, 0.01
    p = 1 / (1 + np.exp(-(x @ w + b)))
    want = log_loss(y, p) + wd / 2 * w @ w + l1 * np.abs(w).sum() + 0.2 / 2 * b * b
    assert cp.objective(x, y, w, b, wd, l1, bias_penalty=0.2) == pytest.approx(want, rel=1e-12)
    theta = np.append(w, b)
    f, g = cp.objective_and_gradient(theta, x, y, wd, 0.2)
    assert f == pytest.approx(cp.objective(x, y, w, b, wd, bias_penalty=0.2), rel=1e-14)
    numeric = approx_fprime(theta, lambda t: cp.objective_and_gradient(t, x, y, wd, 0.2)[0],
                            1e-7)
    np.testing.assert_allclose(g, numeric, atol=1e-6)
    v = rng.standard_normal(theta.size)
    h = 1e-6
    diff = (cp.objective_and_gradient(theta + h * v, x, y, wd, 0.2)[1]
            - cp.objective_and_gradient(theta - h * v, x, y, wd, 0.2)[1]) / (2 * h)
    np.testing.assert_allclose(cp.hessian_product(theta, v, x, y, wd, 0.2), diff, atol=1e-7)


def test_reference_optimum_is_scikit_learns_at_c_equal_one_over_wd_n():
    from sklearn.linear_model import LogisticRegression

    x, y = _small()
    wd = 1e-3
    ref = cp.reference_optimum(x, y, wd)
    clf = LogisticRegression(C=1 / (wd * len(y)), tol=1e-12, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(ref["weights"], clf.coef_.ravel(), atol=1e-6)
    assert ref["bias"] == pytest.approx(clf.intercept_[0], abs=1e-6)
    assert ref["gap_bound"] <= 1e-10
    theirs = cp.objective(x, y, clf.coef_, clf.intercept_[0], wd)
    assert cp.relative_gap(theirs, ref["objective"]) == pytest.approx(0, abs=1e-12)


def test_scoring_rejects_solutions_just_outside_the_tolerance():
    x, y = _small()
    wd = 1e-3
    ref = cp.reference_optimum(x, y, wd)
    best = ref["objective"]
    assert cp.score(x, y, wd, ref["weights"], ref["bias"], best)["within"]
    # Wrong coefficients: 1% larger weights, a bias off by 0.01, the weights of another
    # wd, and the right weights without their bias.
    other = cp.reference_optimum(x, y, 10 * wd)
    for w, b in ((1.01 * ref["weights"], ref["bias"]), (ref["weights"], ref["bias"] + 0.01),
                 (other["weights"], other["bias"]), (ref["weights"], 0.0)):
        verdict = cp.score(x, y, wd, w, b, best)
        assert not verdict["within"] and verdict["gap"] > cp.WITHIN, verdict
    # The driver's own check of its scorer passes, and fails where a 1% move cannot show
    # (a reference at zero: 1% of nothing).
    bench = _bench_module("bench_convex")
    assert bench.check_scorer(x, y, wd, ref) == []
    zero = {"weights": np.zeros(x.shape[1]), "bias": 0.0,
            "objective": cp.objective(x, y, np.zeros(x.shape[1]), 0.0, wd)}
    assert bench.check_scorer(x, y, wd, zero) == [
        "a solution 1% away from the optimum scores within 1e-06 (gap 0.00e+00): the "
        "scoring cannot tell"]


def test_a_tool_that_read_fewer_rows_is_named():
    bench, runs = _bench_module("bench_convex"), _bench_module("convex_runs")
    x, y = _small(200)
    prob = {"x": x, "y": y, "n": 200}
    assert bench.check_read("sklearn", prob, {"read": runs.checksum(x, y)}) == []
    assert bench.check_read("sklearn", prob, {"read": runs.checksum(x[1:], y[1:])})[0] \
        .startswith("sklearn: read rows 199 where the file has 200")
    assert bench.check_read("mpi_dml x2", prob, {"runs": [{"n_train": 150}]}) == [
        "mpi_dml x2: trained on 150 rows where the file has 200"]


def test_snapml_mapping_regularizes_its_intercept_as_documented():
    snapml = pytest.importorskip("snapml")
    runs = _bench_module("convex_runs")
    x, y = _small(2000, 5)
    wd, s = 2e-3, 3.0
    args = type("Args", (), {"intercept_scaling": s, "threads": 1})()
    model = runs.estimator("snapml", 1e-10, wd, len(y), args)
    assert isinstance(model, snapml.LogisticRegression)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y)
    w, b = runs.solution("snapml", model, args)
    own = cp.reference_optimum(x, y, wd, bias_penalty=wd / s ** 2)
    # Its tol bounds a coefficient's change: close to its optimum, not at it.
    np.testing.assert_allclose(np.append(w, b), np.append(own["weights"], own["bias"]),
                               atol=1e-4)
    gap = cp.relative_gap(cp.objective(x, y, w, b, wd, bias_penalty=wd / s ** 2),
                          own["objective"])
    assert 0 <= gap < 1e-9
    plain = cp.reference_optimum(x, y, wd)  # F's optimum is another point
    assert abs(plain["bias"] - b) > 1e-3, (plain["bias"], b)


def test_alpha_beta_fit_and_the_model_table_follow_the_formula():
    alpha, beta = 3e-6, 2e-10
    nbytes = 4096 * 4.0 ** np.arange(7)
    seconds = 2 * alpha + nbytes * beta  # P = 2: 2 log2(2) alpha + 2 (1/2) bytes beta
    fitted = cp.fit_alpha_beta(nbytes, seconds, ranks=2)
    np.testing.assert_allclose(fitted, (alpha, beta), rtol=1e-9)
    assert cp.allreduce_time(1, 1e6, alpha, beta) == 0
    assert cp.allreduce_time(8, 1e6, alpha, beta) == pytest.approx(
        6 * alpha + 2 * 7 / 8 * 1e6 * beta)
    fixed, per_row = cp.fit_compute([1000, 500], [0.002 + 1000e-6, 0.002 + 500e-6])
    assert (fixed, per_row) == (pytest.approx(0.002), pytest.approx(1e-6))
    rows = cp.model_rows(1000, 800, fixed, per_row, 1.5, alpha, beta, max_p=1024)
    assert [r["p"] for r in rows] == [2 ** k for k in range(11)]
    four = rows[2]
    assert four["rows_per_rank"] == 250
    assert four["strong_s"] == pytest.approx(
        1.5 * (0.002 + 250e-6 + 4 * alpha + 1.5 * 800 * beta))
    assert four["weak_s"] == pytest.approx(1.5 * (0.002 + 1000e-6 + 4 * alpha + 1.5 * 800 * beta))
    assert four["speedup"] == pytest.approx(rows[0]["strong_s"] / four["strong_s"])


@pytest.mark.mpi
def test_bench_convex_quick_validates_times_and_models():
    """Both problems, scikit-learn and mpi_dml at 1 and 2 ranks (Snap ML's worker is
    scikit-learn's code path; its mapping is tested above)."""
    r = subprocess.run([sys.executable, "benchmarks/bench_convex.py", "--quick",
                        "--skip-snapml"], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "SKIP snapml: --skip-snapml" in out and "validation: PASS" in out, out
    # tool, tol, iters, load s, train s, wall s, gap to F*, own gap, vs fastest peer
    row = re.compile(r"^ *(sklearn|mpi_dml x1|mpi_dml x2) +[\de.-]+ +\d+ +[\d.]+ +[\d.]+ +"
                     r"(?:[\d.]+|-) +(-?[\d.]+e[-+]\d+) +- +[\d.]+x$", re.M)
    found = row.findall(out)
    assert sorted(tool for tool, _ in found) == sorted(["sklearn", "mpi_dml x1",
                                                        "mpi_dml x2"] * 2), out
    assert all(float(gap) <= 1e-6 for _, gap in found), out
    # Where the time goes (both rank counts, both problems) and the model up to 1024.
    assert len(re.findall(r"^ *(dense|sparse) +[12] +\d+ +[\d.]+ ", out, re.M)) == 4, out
    assert len(re.findall(r"^1024 +\d+ +[\d.]+ +[\d.]+ +", out, re.M)) == 2, out
    assert "Allreduce fitted to bench_allreduce.py at 2 ranks here: alpha" in out
    for problem in ("dense", "sparse"):
        assert re.search(rf"  {problem}: mpi_dml at 2 ranks reaches 1e-06 of F\* in <= 1/1.5 "
                         rf"the train time of the faster peer: [\d.]+x sklearn's  (PASS|MISS)",
                         out), out
