"""``--optimizer lbfgs`` under real mpiexec: the same optimum on any rank count, from CSV
and from LIBSVM rows, after a warm start, and after a stop mid-solve resumed on another
rank count; bad settings refused with one message.

    $ .venv/bin/python -m pytest -q tests/test_lbfgs_mpi.py
"""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from algorithms_for_tests import logistic_data
from conftest import RANKS, ROOT, run_cli, run_mpi
from mpi_dml.engine.checkpoint import load_checkpoint
from mpi_dml.errors import EXIT_PREEMPTED, EXIT_USER_ERROR
from test_lbfgs import objective, scipy_optimum

pytestmark = pytest.mark.mpi

WD, L1 = 1e-2, 0.0
FLAGS = ("--model", "logistic", "--optimizer", "lbfgs", "--weight-decay", str(WD),
         "--dtype", "float64", "--tol", "1e-14", "--max-iter", "300", "--progress", "none",
         "--device", "cpu", "--shards", "64")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Logistic rows as a CSV and as LIBSVM (every value written, so the sparse path
    holds the same matrix), and SciPy's optimum of the objective on them. The features
    are standardized, then scaled down: the optimum lies far from the start, so the
    first line searches need several evaluations."""
    from sklearn.datasets import dump_svmlight_file

    folder = tmp_path_factory.mktemp("lbfgs")
    x, y = logistic_data(n=500, d=6, seed=4)
    x = (x - x.mean(0)) / x.std(0) * 0.1
    csv = folder / "rows.csv"
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["y"])
    np.savetxt(csv, np.column_stack([x, y]), delimiter=",", header=header, comments="",
               fmt="%.17g")
    svm = folder / "rows.svm"
    dump_svmlight_file(x, y.astype(int), str(svm), zero_based=False)
    best, _ = scipy_optimum(x, y, WD, L1)
    return {"csv": csv, "svm": svm, "x": x, "y": y, "optimum": best}


def train(n, data, out, *extra, source="csv", expect=0, script=None):
    source_flags = (("--data", data["csv"], "--label-column", "y") if source == "csv"
                    else ("--data", data["svm"]))
    flags = ["--out", out, *source_flags, *FLAGS, *extra]
    if script is None:
        result = run_cli(n, "train", *flags)
    else:
        result = run_mpi(n, [ROOT / "tests/mpi_scripts/fault_run.py", *script, "--", *flags])
    assert result.returncode == expect, result.stderr
    return result


def weights(out):
    t = load_file(str(Path(out) / "model.safetensors"))
    return t["layers.0.weight"][:, 0], float(t["layers.0.bias"][0])


def lines(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def relative(a, b) -> float:
    a, b = np.append(*a), np.append(*b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def one_rank(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_rank") / "run"
    train(1, data, out)
    return out


def test_one_rank_reaches_scipys_optimum_and_records_each_iteration(data, one_rank):
    w, b = weights(one_rank)
    got = objective(data["x"], data["y"], w, b, WD)
    assert got == pytest.approx(data["optimum"], rel=1e-10)
    records = lines(one_rank)
    assert [r["iteration"] for r in records] == list(range(len(records)))
    for key in ("objective", "grad_norm", "step_size", "evaluations", "compute_s", "comm_s",
                "train_loss", "train_accuracy"):
        assert all(key in r for r in records), key
    assert records[-1]["objective"] == pytest.approx(got, rel=1e-12)
    assert "stop" in records[-1] and all("stop" not in r for r in records[:-1])
    objectives = [r["objective"] for r in records]
    assert all(b <= a + 1e-15 for a, b in zip(objectives, objectives[1:]))  # descends


@pytest.mark.smoke
@pytest.mark.parametrize("n", [n for n in RANKS if n > 1])
def test_any_rank_count_gives_the_same_model(data, one_rank, tmp_path, n):
    out = tmp_path / "run"
    train(n, data, out)
    assert relative(weights(out), weights(one_rank)) <= 1e-9


def test_libsvm_rows_and_a_warm_start_reach_the_same_optimum(data, one_rank, tmp_path):
    # Sparse rows go through the same solver (CSR kernels, no dense copy) at 2 ranks.
    sparse = tmp_path / "sparse"
    train(2, data, sparse, source="svm")
    assert relative(weights(sparse), weights(one_rank)) <= 1e-9
    # Its folder loads as an estimator (no feature names: LIBSVM numbers them) that
    # takes sparse rows.
    import scipy.sparse

    import mpi_dml
    est = mpi_dml.load(sparse)
    w, b = weights(sparse)
    want = data["x"] @ w + b
    np.testing.assert_allclose(est.decision_function(scipy.sparse.csr_matrix(data["x"])),
                               want, rtol=1e-12, atol=1e-12)
    assert not hasattr(est, "feature_names_in_")
    # Two epochs of SGD first: their lines come first, then L-BFGS's from where SGD ended.
    warm = tmp_path / "warm"
    train(2, data, warm, "--warm-start-epochs", "2", "--lr", "0.1", "--batch-size", "32")
    records = lines(warm)
    assert [r.get("epoch") for r in records[:2]] == [0, 1]
    assert records[2]["iteration"] == 0 and "stop" in records[-1]
    assert records[2]["objective"] < lines(one_rank)[0]["objective"]  # SGD moved it
    # Another path to the optimum: it stops elsewhere within --tol of its objective.
    w, b = weights(warm)
    assert objective(data["x"], data["y"], w, b, WD) == pytest.approx(data["optimum"],
                                                                      rel=1e-10)


def test_a_stop_mid_solve_resumes_on_another_rank_count(data, one_rank, tmp_path):
    out = tmp_path / "run"
    # Rank 1 of 3 gets SIGTERM while it computes the fourth evaluation; the job stops
    # after that round or the next. A checkpoint is also written after every round.
    result = train(3, data, out, "--checkpoint-every", "1", "--keep", "1000",
                   expect=EXIT_PREEMPTED, script=("sigterm", "1", "4"))
    assert result.stderr.count("stopped on") == 1
    saved = sorted((out / "checkpoints").glob("ckpt-*.safetensors"))
    states = [load_checkpoint(path) for path in saved]
    assert all(s.algorithm == "lbfgs" for s in states)
    assert set(states[0].arrays) == {"params", "grad", "direction", "s", "y"}
    assert 4 <= states[-1].step <= 5 and not states[-1].counters["done"]
    # One written inside a line search: a trial was evaluated and not yet accepted.
    inside = [p for p, s in zip(saved, states) if s.counters["search.evaluations"] >= 1]
    assert inside
    again = tmp_path / "again"
    train(2, data, again, "--resume", inside[0])
    assert relative(weights(again), weights(one_rank)) <= 1e-9
    train(2, data, out, "--resume")  # from the stop, as a requeued job would
    assert relative(weights(out), weights(one_rank)) <= 1e-9
    assert [r["iteration"] for r in lines(out)] == [r["iteration"] for r in lines(one_rank)]


BAD = {
    "tol": (("--tol", "0"), "The 'tol' parameter of TrainConfig must be > 0 with optimizer lbfgs"),
    "history": (("--history", "0"), "The 'history' parameter of TrainConfig must be >= 1"),
    "hinge": (("--model", "svm", "--loss", "hinge"),
              "The 'optimizer' parameter of TrainConfig must be sgd, adam or adamw for the "
              "hinge loss"),
}


@pytest.mark.parametrize("n", [0, 2])
@pytest.mark.parametrize("case", BAD)
def test_bad_settings_give_one_message(data, tmp_path, n, case):
    flags, message = BAD[case]
    result = train(n, data, tmp_path / "run", *flags, expect=EXIT_USER_ERROR)
    assert result.stderr.count(message) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def sgd_run(data, tmp_path_factory):
    """A run of SGD that left checkpoints (a refused resume leaves them as they are)."""
    out = tmp_path_factory.mktemp("sgd") / "run"
    sgd = ["--out", out, "--data", data["csv"], "--label-column", "y", "--model", "logistic",
           "--optimizer", "sgd", "--epochs", "1", "--checkpoint-every", "3", "--progress",
           "none", "--device", "cpu", "--dtype", "float64", "--shards", "64"]
    assert run_cli(1, "train", *sgd).returncode == 0
    return out


@pytest.mark.parametrize("n", [1, 2])
def test_a_checkpoint_of_another_solver_is_refused(data, sgd_run, n):
    result = train(n, data, sgd_run, "--resume", expect=EXIT_USER_ERROR)
    assert result.stderr.count("was written with optimizer sgd; this run uses lbfgs") == 1
    assert "Traceback" not in result.stderr
