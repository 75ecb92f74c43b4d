"""Run under mpiexec by tests/test_estimators_mpi.py: the estimators on real ranks.

    $ mpiexec -n 3 python -m mpi4py tests/mpi_scripts/estimators_run.py SPEC.json OUT

SPEC.json (written by the test) names the data file (``.npz``: train and test rows
of each dataset), the estimators to fit (class, parameters, dataset) and the model
folders the command line trained, to load. Each rank takes its own uneven share of
every dataset's rows (``share``: with 3 ranks, rank 0 holds none), then:

* fits each estimator, checks that every rank holds the same fitted state bit for
  bit, predicts and scores its share of the test rows, saves the model to
  OUT/saved/NAME; rank 0 writes OUT/NAME.npz (parameters, predictions gathered in
  rank order, the collective score);
* loads each command-line folder with ``mpi_dml.load`` and writes its predictions of
  the test rows to OUT/loaded_NAME.npz;
* provokes errors that only some ranks see and writes, for every rank, the class
  and message it raised to OUT/errors.json.

A rank whose state differs from the others aborts the job (exit 1).
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from mpi4py import MPI

import mpi_dml

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
WEIGHTS = {1: [1], 2: [2, 1], 3: [0, 2, 1], 4: [3, 0, 1, 2]}  # uneven; an empty rank


def share(n):
    """This rank's rows [lo, hi) of n: uneven parts in rank order, some empty."""
    w = np.asarray(WEIGHTS[SIZE] if SIZE in WEIGHTS else [1] * SIZE, dtype=float)
    bounds = np.round(np.concatenate(([0], np.cumsum(w))) / w.sum() * n).astype(int)
    return int(bounds[RANK]), int(bounds[RANK + 1])


def rows(data, dataset, part, frame):
    """This rank's features and labels of ``dataset``'s ``part`` (train or test)."""
    x, y = data[f"{dataset}_{part}_x"], data[f"{dataset}_{part}_y"]
    lo, hi = share(len(x))
    x, y = x[lo:hi], y[lo:hi]
    if frame:  # a DataFrame with named columns, the labels a named Series
        return (pd.DataFrame(x, columns=[f"f{j}" for j in range(x.shape[1])]),
                pd.Series(y, name="target"))
    return x, y


def plain(a):
    """Labels from a pandas Series are objects; the .npz files hold strings."""
    a = np.asarray(a)
    return a.astype(str) if a.dtype == object else a


def gathered(local):
    """Every rank's array concatenated in rank order (on rank 0; None elsewhere)."""
    parts = COMM.gather(plain(local), root=0)
    return np.concatenate(parts) if RANK == 0 else None


def same_everywhere(name, arrays):
    """Abort unless every rank holds these arrays bit for bit."""
    mine = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    if len(set(COMM.allgather(mine))) != 1:
        print(f"rank {RANK}: {name}: fitted state differs between ranks", file=sys.stderr,
              flush=True)
        COMM.Abort(1)


def fitted_arrays(est):
    if hasattr(est, "coefs_"):
        return [*est.coefs_, *est.intercepts_]
    return [np.atleast_1d(est.coef_), np.atleast_1d(est.intercept_)]


def outputs(est, x):
    """Predictions of this rank's test rows, gathered: labels, scores, probabilities."""
    out = {"predict": gathered(est.predict(x))}
    for method in ("decision_function", "predict_proba"):
        if hasattr(est, method):
            out[method] = gathered(getattr(est, method)(x))
    return out


def fit_all(spec, data, out):
    for name, (cls, params, dataset) in spec["estimators"].items():
        frame = dataset != "regression"
        est = getattr(mpi_dml, cls)(**params)
        est.fit(*rows(data, dataset, "train", frame))
        same_everywhere(name, [est._params, *fitted_arrays(est)])
        x_test, y_test = rows(data, dataset, "test", frame)
        result = outputs(est, x_test)
        score = est.score(x_test, y_test)
        if len(set(COMM.allgather(score))) != 1:
            print(f"rank {RANK}: {name}: score differs between ranks", file=sys.stderr)
            COMM.Abort(1)
        est.save(out / "saved" / name, label_column="target")
        if RANK == 0:
            scale = est._scale if est._scale is not None else (np.zeros(0), np.zeros(0))
            np.savez(out / f"{name}.npz", params=est._params, mean=scale[0], std=scale[1],
                     score=score, n_iter=est.n_iter_, loss_curve=est.loss_curve_,
                     classes=plain(getattr(est, "classes_", np.zeros(0))),
                     dtype=str(est._params.dtype),
                     **{f"layer_{i}": a for i, a in enumerate(fitted_arrays(est))},
                     **result)


def load_all(spec, data, out):
    for name, (folder, dataset) in spec["cli_models"].items():
        est = mpi_dml.load(folder)
        x_test, _ = rows(data, dataset, "test", frame=dataset != "regression")
        result = outputs(est, x_test)
        if RANK == 0:
            np.savez(out / f"loaded_{name}.npz", cls=type(est).__name__,
                     classes=plain(getattr(est, "classes_", np.zeros(0))),
                     **{f"layer_{i}": a for i, a in enumerate(fitted_arrays(est))},
                     **result)


def outcome(action):
    try:
        action()
    except Exception as exc:  # what each rank raised, compared by the test
        return [type(exc).__name__, str(exc)]
    return None


def provoke_errors(data, out):
    """Errors in only the last rank's input must reach every rank, which all raise."""
    last = RANK == SIZE - 1
    x, y = rows(data, "multi", "train", frame=False)
    x_all, y_all = data["multi_train_x"], data["multi_train_y"]
    fast = dict(max_iter=1, random_state=0, tol=None)
    cases = {}

    def nan_on_last():
        xx, yy = np.vstack([x_all[:3], x]), np.concatenate([y_all[:3], y])
        if last:
            xx[0, 1] = np.nan
        mpi_dml.LogisticRegression(**fast).fit(xx, yy)
    cases["nan_on_last"] = outcome(nan_on_last)

    def third_class_on_last():
        yy = np.array([0, 1, 0, 1, 2] if last else [0, 1, 0, 1])
        mpi_dml.LinearSVC(**fast).fit(x_all[:len(yy)], yy)
    cases["third_class_on_last"] = outcome(third_class_on_last)

    def bad_param():
        mpi_dml.MLPClassifier(learning_rate_init=-1.0, **fast).fit(x_all[:8], y_all[:8])
    cases["bad_param"] = outcome(bad_param)

    def bad_param_on_last():
        mpi_dml.MLPRegressor(alpha=-1.0 if last else 0.0, **fast).fit(x_all[:8], y_all[:8])
    cases["bad_param_on_last"] = outcome(bad_param_on_last)

    def one_class():
        mpi_dml.LogisticRegression(**fast).fit(x_all[:5], np.full(5, 7))
    cases["one_class"] = outcome(one_class)

    def load_missing():  # rank 0 reads; every rank learns why it could not
        mpi_dml.load(out / "no_such_model")
    cases["load_missing"] = outcome(load_missing)

    est = mpi_dml.LogisticRegression(**fast).fit(x, y)

    def score_wrong_width_on_last():
        est.score(x_all[:4, :-1] if last else x_all[:4], y_all[:4])
    cases["score_wrong_width_on_last"] = outcome(score_wrong_width_on_last)

    if SIZE > 1:
        def width_differs_on_last():
            xx = x_all[:6, :-1] if last else x_all[:6]
            mpi_dml.LinearRegression(**fast).fit(xx, np.arange(6.0))
        cases["width_differs_on_last"] = outcome(width_differs_on_last)

    # Every rank is still in step: one more collective fit completes. Rank 0's rows
    # are float32, the others' float64: training is in float64 unless all are float32.
    xx = x_all[:6].astype(np.float32) if RANK == 0 else x_all[:6]
    fitted = mpi_dml.LinearRegression(**fast).fit(xx, np.arange(6.0))
    every = COMM.gather({"cases": cases, "dtype": str(fitted.coef_.dtype)}, root=0)
    if RANK == 0:
        (out / "errors.json").write_text(json.dumps({"size": SIZE, "ranks": every}))


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    data = dict(np.load(spec["data"], allow_pickle=False))
    fit_all(spec, data, out)
    load_all(spec, data, out)
    provoke_errors(data, out)


if __name__ == "__main__":
    main()
