"""Run under mpiexec by tests/test_estimators_lbfgs.py: L-BFGS fits on uneven ranks.

    $ mpiexec -n 3 python -m mpi4py tests/mpi_scripts/lbfgs_estimators.py OUT

Each of 3 ranks takes an uneven share of the (standardized) breast cancer rows, in
rank order: 300, 69 and 200. It fits the L2 logistic regression (C = 1) and the
elastic net of the test at tol=TIGHT_TOL, checks that every rank holds the same model
bit for bit, and fits twice more, stopped by max_iter (L-BFGS after 2 iterations, Adam
after 1 epoch), recording whether a ConvergenceWarning came on this rank. Rank 0
writes OUT/fits.npz: each model's coef and intercept, the rows of each rank and every
rank's warning flags. A rank whose model differs aborts the job.
"""
import sys
import warnings
from pathlib import Path

import numpy as np
from mpi4py import MPI
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning

import mpi_dml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import convex_reference as ref  # noqa: E402

COMM = MPI.COMM_WORLD
ROWS = [300, 69, 200]


def main(out: Path):
    data = load_breast_cancer()
    x, y = ref.standardized(data.data), data.target
    lo = sum(ROWS[:COMM.rank])
    x, y = x[lo:lo + ROWS[COMM.rank]], y[lo:lo + ROWS[COMM.rank]]
    found = {}
    for name, est in (
            ("logistic_l2", mpi_dml.LogisticRegression(C=1.0, tol=ref.TIGHT_TOL)),
            ("elastic_net_logistic",
             mpi_dml.LogisticRegression(**ref.ELASTIC_NET, tol=ref.TIGHT_TOL))):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)  # these must converge
            est.fit(x, y)
        mine = est.coef_.tobytes() + est.intercept_.tobytes()
        if len(set(COMM.allgather(mine))) != 1:
            print(f"rank {COMM.rank}: {name}: the model differs between ranks",
                  file=sys.stderr, flush=True)
            COMM.Abort(1)
        found[f"{name}_coef"], found[f"{name}_intercept"] = est.coef_, est.intercept_
    for name, est in (("warned", mpi_dml.LogisticRegression(C=1.0, max_iter=2)),
                      ("warned_adam", mpi_dml.LogisticRegression(solver="adam", max_iter=1,
                                                                 tol=1e-4))):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            est.fit(x, y)
        warned = any(issubclass(w.category, ConvergenceWarning) for w in seen)
        found[name] = COMM.gather(warned, root=0)
    found["rows"] = COMM.gather(len(y), root=0)
    if COMM.rank == 0:
        np.savez(out / "fits.npz", **found)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
