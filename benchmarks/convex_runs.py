"""One run of each tool ``bench_convex.py`` times: the scikit-learn and Snap ML workers,
``mpiexec ... python -m mpi_dml train --optimizer lbfgs``, and the Allreduce timings
its cost model is fitted to. Not run directly.

A worker is this file run as a script: it reads the problem's file (timed: load_s),
then fits once per setting of its sweep (timed: train_s, the estimator's ``fit`` alone),
saves each solution as ``run-K.npy`` (weights, then the bias) and prints one JSON line.
It stops early once a solution scores within ``convex_problems.WITHIN`` of ``--best``
by the benchmark's formula (the driver scores every saved solution again), or once a
fit has taken ``--max-fit-s``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import convex_problems as cp  # noqa: E402

HERE = Path(__file__).resolve()
# argparse's words for a flag or a choice it does not know, and what an mpi_dml whose
# config knows --optimizer lbfgs but has no algorithm behind it yet raises.
REFUSED = ("unrecognized arguments", "invalid choice", "KeyError: 'lbfgs'")


class Refused(Exception):
    """This mpi_dml cannot run the full-batch solver this benchmark times."""


# --- reading a problem's file, as each tool's user would -------------------------------
def load(kind: str, path: str, n_features: int):
    """Rows and labels from ``dense.npy`` (features, then the label column) or
    ``sparse.svm`` (LIBSVM, 1-based, ``n_features`` features)."""
    if kind == "dense":
        table = np.load(path)
        return np.ascontiguousarray(table[:, :-1]), np.ascontiguousarray(table[:, -1])
    from sklearn.datasets import load_svmlight_file

    return load_svmlight_file(path, n_features=n_features, zero_based=False)


def checksum(x, y) -> dict:
    """What a tool read, to compare with what was written: shape, nonzeros and sums."""
    nnz = int(x.nnz) if hasattr(x, "nnz") else int(np.count_nonzero(x))
    return {"rows": int(x.shape[0]), "cols": int(x.shape[1]), "nnz": nnz,
            "x_sum": float(x.sum()), "y_sum": float(y.sum())}


# --- the peers' estimators ----------------------------------------------------------------
def estimator(tool: str, tol: float, wd: float, n: int, args):
    """scikit-learn's C and Snap ML's regularizer for F (see convex_problems)."""
    if tool == "sklearn":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(solver="lbfgs", C=1.0 / (wd * n), tol=tol, max_iter=100_000)
    import snapml

    # dual=True (its default): with dual=False and fit_intercept=True, Snap ML 1.17
    # returns an intercept of 0 and weights that minimise neither objective.
    return snapml.LogisticRegression(regularizer=wd * n, fit_intercept=True,
                                     intercept_scaling=args.intercept_scaling, dual=True,
                                     tol=tol, max_iter=1_000_000, n_jobs=args.threads)


def intercept_scaling(tool: str) -> float:
    """Snap ML's ``s`` from a tool's name, ``snapml s=10``; 1 when it names none."""
    return float(tool.split("s=")[1]) if "s=" in tool else 1.0


def solution(tool: str, model, args) -> tuple[np.ndarray, float]:
    """Weights and bias ``b`` of F; Snap ML's ``intercept_`` is ``b / intercept_scaling``."""
    bias = float(np.ravel(model.intercept_)[0])
    if tool == "snapml":
        bias *= args.intercept_scaling
    return np.ravel(model.coef_).astype(np.float64), bias


def iterations(model) -> int:
    return int(np.max(model.n_iter_)) if hasattr(model, "n_iter_") else -1


def worker(args):
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    x, y = load(args.problem, args.data, args.features)
    measured = {"load_s": time.perf_counter() - t0, "read": checksum(x, y), "runs": []}
    out = Path(args.out)
    with threadpool_limits(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the sweep's loose settings
        for k, tol in enumerate(float(t) for t in args.settings.split(",")):
            model = estimator(args.worker, tol, args.weight_decay, x.shape[0], args)
            t1 = time.perf_counter()
            model.fit(x, y)
            seconds = time.perf_counter() - t1
            weights, bias = solution(args.worker, model, args)
            np.save(out / f"run-{k}.npy", np.append(weights, bias))
            run = {"setting": tol, "train_s": seconds, "iterations": iterations(model),
                   "file": str(out / f"run-{k}.npy")}
            measured["runs"].append(run)
            if args.best and cp.score(x, y, args.weight_decay, weights, bias,
                                      args.best)["within"]:
                break
            if seconds > args.max_fit_s:
                measured["stopped"] = f"a fit took {seconds:.0f} s > --max-fit-s"
                break
    print(json.dumps(measured), flush=True)


def run_peer(tool: str, problem: str, path: str, n_features: int, settings, ctx, out: Path,
             best: float = 0.0) -> dict:
    """One worker process: ``tool`` with ``ctx.threads`` threads on ``problem``."""
    cmd = [sys.executable, str(HERE), "--worker", tool.split()[0], "--problem", problem,
           "--data", path, "--features", str(n_features), "--out", str(out),
           "--settings", ",".join(f"{s:g}" for s in settings),
           "--weight-decay", repr(ctx.weight_decay[problem]), "--best", repr(best),
           "--threads", str(ctx.threads), "--max-fit-s", str(ctx.max_fit_s),
           "--intercept-scaling", repr(intercept_scaling(tool))]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=ctx.timeout,
                            env=common.worker_env(common.threads_env(ctx.threads)),
                            cwd=common.ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{tool} on {problem} failed with status {result.returncode}:\n"
                           f"{result.stdout}\n{result.stderr}")
    measured = json.loads(common.last_json_line(result.stdout))
    for run in measured["runs"]:
        run["load_s"] = measured["load_s"]  # once per worker: every run of it paid it
        theta = np.load(run.pop("file"))
        run["weights"], run["bias"] = theta[:-1], float(theta[-1])
    return measured


# --- mpi_dml, launched as a user runs it ---------------------------------------------------
def mpi_dml_args(problem: str, path: str, n_features: int, tol: float, wd: float,
                 max_iter: int, out: Path) -> list:
    data = (["--data", path, "--label-column", str(n_features)] if problem == "dense" else
            ["--data", path, "--format", "libsvm", "--num-features", n_features])
    return ["-m", "mpi_dml", "train", *data, "--model", "logistic", "--optimizer", "lbfgs",
            "--weight-decay", repr(wd), "--dtype", "float64", "--tol", f"{tol:g}",
            "--max-iter", max_iter, "--history", 10, "--seed", 0, "--progress", "none",
            # One thread a rank, at 1 rank too: the default there (the node's cores) met
            # the other jobs of a shared machine in a threaded kernel and stalled.
            "--threads", 1, "--out", out]


def launch_mpi_dml(p: int, cli_args, timeout: float) -> float:
    """``mpiexec -n P python ARGS`` with one thread a rank: its wall time."""
    t0 = time.perf_counter()
    try:
        common.run_ranks(p, cli_args, timeout=timeout)
    except RuntimeError as exc:
        if any(word in str(exc) for word in REFUSED):
            lines = [ln for ln in str(exc).splitlines() if "error:" in ln or "Error" in ln]
            raise Refused(lines[-1] if lines else str(exc)) from None
        raise
    return time.perf_counter() - t0


def run_mpi_dml(p: int, problem: str, path: str, n_features: int, tol: float, ctx,
                out: Path) -> dict:
    """One training run: wall time, its own per-iteration timers summed, the solution."""
    from mpi_dml.io.model_files import load_model

    wall = launch_mpi_dml(p, mpi_dml_args(problem, path, n_features, tol,
                                          ctx.weight_decay[problem], ctx.max_iter, out),
                          ctx.timeout)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((out / "model.json").read_text())
    # The model files as written (mpi_dml.load, the estimator, refuses a LIBSVM model's
    # missing feature names).
    loaded = load_model(out)
    tensors = loaded.model.named(loaded.params)
    train = sum(r["epoch_s"] for r in records)
    return {"setting": tol, "wall_s": wall, "train_s": train, "load_s": wall - train,
            "iterations": len(records), "n_train": info.get("n_train"),
            "evaluations": sum(r.get("evaluations", 1) for r in records),
            "per_iteration": [{k: r.get(k) for k in ("compute_s", "comm_s", "epoch_s",
                                                      "evaluations")} for r in records],
            "weights": np.ravel(tensors["layers.0.weight"]).astype(np.float64),
            "bias": float(np.ravel(tensors["layers.0.bias"])[0])}


# --- the Allreduce timings the cost model is fitted to ----------------------------------
def measure_allreduce(quick: bool, timeout: float) -> dict:
    """``mpiexec -n 2 bench_allreduce.py``: engine seconds per call by buffer size."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "allreduce.json"
        limits = ["--max-mb", "1", "--repeats", "3"] if quick else ["--max-mb", "16",
                                                                     "--repeats", "7"]
        common.run_ranks(2, [HERE.parent / "bench_allreduce.py", *limits, "--json", report],
                         timeout=timeout)
        sizes = json.loads(report.read_text())["sizes"]
    nbytes = [s["bytes"] for s in sizes]
    seconds = [s["engine_s"] for s in sizes]
    alpha, beta = cp.fit_alpha_beta(nbytes, seconds, ranks=2)
    return {"bytes": nbytes, "engine_s": seconds, "alpha_s": alpha, "beta_s_per_byte": beta}


def main(argv=None):
    ap = argparse.ArgumentParser(description="A bench_convex.py worker (not run directly).")
    ap.add_argument("--worker", choices=("sklearn", "snapml"), required=True)
    ap.add_argument("--problem", choices=("dense", "sparse"), required=True)
    for name in ("--data", "--out", "--settings"):
        ap.add_argument(name, required=True)
    for name, default in (("--weight-decay", None), ("--best", 0.0), ("--max-fit-s", 600.0),
                          ("--intercept-scaling", 1.0)):
        ap.add_argument(name, type=float, default=default)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--features", type=int, required=True)
    worker(ap.parse_args(argv))


if __name__ == "__main__":
    main()
