"""The engine/algorithm contract holds for a full-batch quasi-Newton method and k-means.

    $ .venv/bin/python -m pytest -q tests/test_algorithm_contract.py
    $ .venv/bin/python -m pytest -q tests/test_algorithm_contract.py -m "not mpi"

``algorithms.base`` says that an algorithm needing several full passes per iteration
(a line search, a history of vector pairs) and one with no labels and no gradient
(k-means) run on the engine as it is. ``tests/algorithms_for_tests.py`` has both,
written only against that contract and ``models.protocol``; here the unchanged engine
(through ``api.run.fit_arrays``) drives them, and the results are compared with things
that do not use the engine:

* L-BFGS on the built-in logistic model with an L2 term, objective mean loss +
  alpha/2 ||w||^2, against scikit-learn's ``LogisticRegression(C=1 / (alpha n))`` and
  against the gradient of the same objective written in NumPy;
* Lloyd's k-means against a NumPy replay from the same initial centroids and against
  scikit-learn's ``KMeans(init=those centroids, n_init=1, algorithm="lloyd")``;
* both at every rank count of ``conftest.RANKS`` under real mpiexec (the same result
  as one process: full-batch sums differ only in rounding), and both resumed from a
  checkpoint in the middle of a run, on the same rank count (bit for bit) and on
  another (to rounding), with the state stored as ``state.<name>`` in the file.

The tests at the end check what the contract promises beyond the arithmetic: every
rank holds the whole history after a resume, progress lines show any algorithm's
records, and a model with only the protocol's methods is written to model files.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file

import algorithms_for_tests as alg
from conftest import RANKS, ROOT, run_mpi
from mpi_dml.engine.checkpoint import load_checkpoint
from mpi_dml.engine.checkpoint_folder import list_checkpoints

SCRIPT = ROOT / "tests" / "mpi_scripts" / "contract_fit.py"

# Measured here (float64, 300 rows, 6 parameters): the L-BFGS optimum is within 1.1e-11
# (relative, max-norm) of scikit-learn's newton-cholesky solution and within 4.2e-8 of
# its lbfgs one, whose SciPy solver stops on the relative decrease of f (64 ulps) with a
# gradient near 1e-8; ours stops at a gradient max-norm of 1e-12 (6.4e-13 reached).
VS_NEWTON = 1e-10
VS_SKLEARN_LBFGS = 1e-6
# The same problem on any rank count: full-batch sums differ only in rounding, and both
# runs stop within |gradient| / (smallest curvature) ~ 1e-11 of the one optimum.
ACROSS_RANKS = 1e-9
# k-means: the same assignments every round, so only the rounding of the sums differs.
KMEANS_RTOL = 1e-10
TIMING = ("samples_per_s", "epoch_s", "compute_s", "comm_s", "data_s")


def sklearn_c(n_rows: int) -> float:
    """scikit-learn minimises 1/2 ||w||^2 + C sum(loss); divided by C n that is mean
    loss + 1/(2 C n) ||w||^2, so alpha = 1 / (C n)."""
    return 1.0 / (alg.LOGISTIC_ALPHA * n_rows)


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


# --- one process ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def lbfgs_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lbfgs") / "run"
    return alg.fit_lbfgs(out=str(out), checkpoint_every="1", keep=1000), out


@pytest.fixture(scope="module")
def kmeans_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kmeans") / "run"
    return alg.fit_kmeans(out=str(out), checkpoint_every="1", keep=1000), out


def test_lbfgs_reaches_the_optimum_of_scikit_learn(lbfgs_run):
    sklearn = pytest.importorskip("sklearn.linear_model")
    engine, _ = lbfgs_run
    x, y = alg.logistic_data()
    w, b = alg.logistic_weights(engine.params, x.shape[1])
    # The objective's gradient, written here in NumPy, vanishes at the engine's result.
    _, grad = alg.logistic_objective(x, y, w, b, alg.LOGISTIC_ALPHA)
    assert np.abs(grad).max() < 10 * alg.LBFGS_TOL
    ours = np.append(w, b)
    for solver, rtol in (("newton-cholesky", VS_NEWTON), ("lbfgs", VS_SKLEARN_LBFGS)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs: "stopped on the decrease of f"
            ref = sklearn.LogisticRegression(C=sklearn_c(len(x)), solver=solver, tol=1e-12,
                                             max_iter=1000).fit(x, y)
        theirs = np.append(ref.coef_[0], ref.intercept_[0])
        assert alg.relative_difference(ours, theirs) < rtol, solver


def test_lbfgs_writes_one_metrics_line_per_iteration(lbfgs_run):
    engine, out = lbfgs_run
    history = engine.history
    x, y = alg.logistic_data()
    assert [r["iteration"] for r in history] == list(range(len(history)))
    # Each round is one FullPass; the engine's summed row counts give each iteration's
    # evaluations, and together they are every round the engine ran.
    evaluations = [r["evaluations"] for r in history]
    assert sum(evaluations) == engine.step
    assert evaluations[0] >= 2  # the initial point, then at least one trial
    assert max(evaluations[1:]) >= 2, "no line search backtracked: pick other data"
    # Backtracking halves the first trial: a unit move from the initial point (the
    # parameters start at 0), then the quasi-Newton step 1.
    _, grad0 = alg.logistic_objective(x, y, np.zeros(x.shape[1]), 0.0, alg.LOGISTIC_ALPHA)
    first = [1.0 / np.linalg.norm(grad0)] + [1.0] * (len(history) - 1)
    halvings = np.log2(np.array(first) / [r["step_size"] for r in history])
    assert np.allclose(halvings, np.round(halvings), atol=1e-9)
    # One halving per rejected trial; iteration 0 also evaluates the initial point.
    rejected = [e - 2 if i == 0 else e - 1 for i, e in enumerate(evaluations)]
    assert list(np.round(halvings).astype(int)) == rejected
    objectives = np.array([r["objective"] for r in history])
    slack = alg.ROUNDING_ULPS * np.finfo(np.float64).eps * objectives[:-1]
    assert np.all(np.diff(objectives) <= slack)
    assert history[-1]["grad_norm"] <= alg.LBFGS_TOL
    # The last line's objective and loss are those of the returned parameters.
    w, b = alg.logistic_weights(engine.params, x.shape[1])
    objective, _ = alg.logistic_objective(x, y, w, b, alg.LOGISTIC_ALPHA)
    assert history[-1]["objective"] == pytest.approx(objective, rel=1e-13)
    loss = objective - 0.5 * alg.LOGISTIC_ALPHA * w @ w
    assert history[-1]["train_loss"] == pytest.approx(loss, rel=1e-13)
    assert engine.final["train_loss"] == history[-1]["train_loss"]
    written = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert without_timing(written) == without_timing(history)


def test_lloyd_matches_a_numpy_replay_and_scikit_learn(kmeans_run):
    cluster = pytest.importorskip("sklearn.cluster")
    engine, _ = kmeans_run
    x = alg.blob_data()
    start = alg.initial_centroids(x)
    assert np.all((start >= x.min(axis=0)) & (start <= x.max(axis=0)))
    ours = engine.params.reshape(start.shape)
    replay, rounds = alg.lloyd_replay(x, start)
    assert engine.step == rounds == len(engine.history)
    assert alg.relative_difference(ours, replay) < KMEANS_RTOL
    ref = cluster.KMeans(alg.KMEANS_K, init=start, n_init=1, algorithm="lloyd", tol=0.0,
                         max_iter=100).fit(x)
    assert ref.n_iter_ == rounds
    assert alg.relative_difference(ours, ref.cluster_centers_) < KMEANS_RTOL
    last = engine.history[-1]
    assert last["shift"] == 0.0 and last["empty_clusters"] == 0
    assert last["rows"] == len(x)
    assert last["inertia"] == pytest.approx(ref.inertia_, rel=KMEANS_RTOL)
    assert last["inertia_by_ranks"] == pytest.approx(last["inertia"], rel=1e-12)


@pytest.mark.parametrize("name", ["lbfgs", "kmeans"])
def test_resume_on_the_same_rank_count_is_bit_for_bit(name, lbfgs_run, kmeans_run,
                                                       tmp_path):
    engine, out = {"lbfgs": lbfgs_run, "kmeans": kmeans_run}[name]
    fit = {"lbfgs": alg.fit_lbfgs, "kmeans": alg.fit_kmeans}[name]
    for ckpt in middle_checkpoints(out, name):
        again = fit(out=str(tmp_path / ckpt.stem), resume=str(ckpt))
        assert np.array_equal(again.params, engine.params), ckpt.name
        assert without_timing(again.history) == without_timing(engine.history), ckpt.name
        assert again.step == engine.step


def test_checkpoints_store_the_algorithms_own_state(lbfgs_run, kmeans_run):
    engine, out = lbfgs_run
    n = engine.model.size
    ckpt = middle_checkpoints(out, "lbfgs")[0]
    tensors = load_file(ckpt)  # read directly, not through the engine's reader
    assert {k: v.shape for k, v in tensors.items()} == {
        "state.params": (n,), "state.grad": (n,), "state.direction": (n,),
        "state.s": (alg.MEMORY, n), "state.y": (alg.MEMORY, n)}
    state = load_checkpoint(ckpt)
    assert state.algorithm == "lbfgs"
    assert state.counters["iteration"] >= 1 and state.counters["evaluation"] >= 1
    # The rounds of the unfinished iteration travel with the checkpoint: rows summed
    # over every rank for each evaluation done so far.
    assert state.period["stats"] == [state.counters["evaluation"] * 300.0]

    engine, out = kmeans_run
    tensors = load_file(middle_checkpoints(out, "kmeans")[0])
    assert {k: v.shape for k, v in tensors.items()} == {
        "state.params": (alg.KMEANS_K * 3,), "state.counts": (alg.KMEANS_K,)}
    assert tensors["state.counts"].sum() == 400


def middle_checkpoints(out, name):
    """Checkpoints from inside the run: for L-BFGS, those taken after a rejected trial
    of a line search that already had (s, y) pairs, then one with a full history; for
    k-means, the middle one."""
    found = list_checkpoints(out / "checkpoints")
    if name == "kmeans":
        return [found[len(found) // 2]]
    counters = {p: load_checkpoint(p).counters for p in found}
    in_search = [p for p, c in counters.items() if c["iteration"] >= 1 and c["evaluation"] >= 1]
    full = [p for p, c in counters.items() if c["pairs"] == alg.MEMORY and c["evaluation"] == 0]
    assert in_search and full
    return [in_search[0], full[len(full) // 2]]


# --- under mpiexec --------------------------------------------------------------------
def launch(n, result, *args):
    done = run_mpi(n, [SCRIPT, result, *args], timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def mpi_runs(tmp_path_factory):
    """Both algorithms at every rank count, with a checkpoint after every round."""
    base = tmp_path_factory.mktemp("contract")
    runs = {}
    for n in RANKS:
        runs[n] = launch(n, base / f"ranks-{n}.json", "--out", base / f"ranks-{n}")
        runs[n]["out"] = base / f"ranks-{n}"
    return runs


@pytest.mark.mpi
@pytest.mark.parametrize("n", RANKS)
def test_lbfgs_gives_the_same_optimum_on_any_rank_count(n, mpi_runs, lbfgs_run):
    got = mpi_runs[n]["lbfgs"]
    assert got["world_size"] == n
    assert alg.relative_difference(got["params"], lbfgs_run[0].params) < ACROSS_RANKS
    assert got["history"][-1]["grad_norm"] <= alg.LBFGS_TOL
    assert sum(r["evaluations"] for r in got["history"]) == got["rounds"]
    assert got["history_lengths"] == [len(got["history"])] * n


@pytest.mark.mpi
@pytest.mark.parametrize("n", RANKS)
def test_lloyd_gives_the_same_centroids_on_any_rank_count(n, mpi_runs):
    got = mpi_runs[n]["kmeans"]
    x = alg.blob_data()
    replay, rounds = alg.lloyd_replay(x, alg.initial_centroids(x))
    assert got["rounds"] == rounds
    assert alg.relative_difference(got["params"], replay.ravel()) < KMEANS_RTOL
    assert [r["rows"] for r in got["history"]] == [len(x)] * rounds


def resume_pairs():
    """(rank count that wrote the checkpoints, another that resumes from them)."""
    others = RANKS[1:] + RANKS[:1]
    return list(zip(RANKS, others))[:2]


@pytest.mark.mpi
@pytest.mark.parametrize("wrote,resumes", resume_pairs())
def test_resume_on_another_rank_count(wrote, resumes, mpi_runs, tmp_path):
    first = mpi_runs[wrote]
    lbfgs_ckpt = middle_checkpoints(first["out"] / "lbfgs", "lbfgs")[0]
    kmeans_ckpt = middle_checkpoints(first["out"] / "kmeans", "kmeans")[0]
    got = launch(resumes, tmp_path / "resumed.json", "--out", tmp_path / "out",
                 "--resume", f"lbfgs={lbfgs_ckpt}", "--resume", f"kmeans={kmeans_ckpt}")
    for name, rtol in (("lbfgs", ACROSS_RANKS), ("kmeans", KMEANS_RTOL)):
        assert got[name]["world_size"] == resumes
        assert alg.relative_difference(got[name]["params"],
                                       first[name]["params"]) < rtol, name
    # The iteration the checkpoint interrupted counts its evaluations before and after.
    interrupted = load_checkpoint(lbfgs_ckpt).counters
    record = got["lbfgs"]["history"][interrupted["iteration"]]
    assert record["evaluations"] > interrupted["evaluation"]
    assert got["lbfgs"]["history"][-1]["grad_norm"] <= alg.LBFGS_TOL
    assert got["kmeans"]["rounds"] == first["kmeans"]["rounds"]
    assert without_timing(got["kmeans"]["history"])[-1]["empty_clusters"] == 0


# --- what the contract promises beyond the arithmetic ---------------------------------
@pytest.mark.mpi
def test_every_rank_has_the_whole_history_after_a_resume(mpi_runs, tmp_path):
    n = max(RANKS)
    if n == 1:
        pytest.skip("needs more than one rank")
    ckpt = middle_checkpoints(mpi_runs[n]["out"] / "kmeans", "kmeans")[0]
    got = launch(n, tmp_path / "resumed.json", "--out", tmp_path / "out", "--only",
                 "kmeans", "--resume", f"kmeans={ckpt}")["kmeans"]
    assert got["history_lengths"] == [len(got["history"])] * n


def test_progress_lines_show_any_algorithms_records():
    alg.fit_kmeans(progress="lines")


def test_model_files_of_a_model_that_has_only_the_protocol(tmp_path):
    alg.fit_kmeans(model_kind=alg.KMeansModel, out=str(tmp_path / "run"))
