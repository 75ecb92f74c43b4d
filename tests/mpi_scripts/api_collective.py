"""Run under mpiexec by tests/test_api_collective_mpi.py: API calls that must end the
same way on every rank, whatever one rank meets.

    $ mpiexec -n 2 python tests/mpi_scripts/api_collective.py CASE OUT

CASE is ``blocked_metrics`` (the checkpoint folder's metrics.jsonl is a folder, so rank
0 cannot write it), ``text_on_one_rank`` (the last rank's X holds a string) or
``random_state`` (a RandomState passed to fit, then used again). Every rank writes
``OUT.rank<R>.json``: the error it raised (class and message) or what it drew.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

import mpi_dml


class Squares(mpi_dml.CustomModel):
    """Least squares with three parameters: the smallest model that trains."""

    size = 3

    def loss_grad(self, params, grad, X, y):
        residual = X @ params[:2] + params[2] - y
        grad[:2] = X.T @ residual
        grad[2] = residual.sum()
        return float(0.5 * residual @ residual)


def rows(rank: int, n: int = 40):
    rng = np.random.default_rng(rank)
    X = rng.normal(size=(n, 2))
    return X, X @ np.array([1.0, -2.0]) + 0.5


def main(case: str, out: str) -> int:
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    X, y = rows(rank)
    report = {}
    try:
        if case == "blocked_metrics":
            folder = Path(out + ".ckpt")
            if rank == 0:
                (folder / "metrics.jsonl").mkdir(parents=True, exist_ok=True)
            MPI.COMM_WORLD.Barrier()
            mpi_dml.train(Squares(), X, y, max_iter=2, batch_size=16,
                          checkpoint_dir=str(folder), checkpoint_every=2)
        elif case == "text_on_one_rank":
            if rank == size - 1:
                X = X.astype(object)
                X[7, 1] = "n/a"
            mpi_dml.train(Squares(), X, y, max_iter=2, batch_size=16)
        elif case == "random_state":
            rs = np.random.RandomState(0)
            mpi_dml.LinearRegression(random_state=rs, max_iter=2).fit(X, y)
            report["next_draw"] = int(rs.randint(1000))
    except Exception as exc:  # noqa: BLE001 - the report is the point
        report["error"] = [type(exc).__name__, str(exc)]
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
