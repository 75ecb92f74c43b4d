"""Training on CSR rows under real mpiexec: the same model as the same rows given dense
on the dense path, at every rank count, and a mid-epoch resume on another rank count.

    $ python -m pytest -q tests/test_sparse_engine_mpi.py
    $ MPI_DML_TEST_RANKS=1,2 python -m pytest -q tests/test_sparse_engine_mpi.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import RANKS, run_mpi

SCRIPT = Path(__file__).parent / "mpi_scripts" / "sparse_train.py"
TOL = 1e-6  # float64: sums taken in another order on another number of ranks


def close(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


@pytest.mark.mpi
def test_sparse_training_matches_dense_on_every_rank_count_and_resumes(tmp_path):
    # Each launch resumes the checkpoint the previous one wrote, at another rank count.
    counts = list(RANKS) if len(RANKS) > 1 else [RANKS[0], RANKS[0] % 4 + 1]
    previous, first = None, None
    for n in counts:
        out = tmp_path / f"ranks{n}"
        args = [SCRIPT, out / "result.json", "--out", out]
        r = run_mpi(n, args + (["--resume-from", previous[0]] if previous else []), timeout=300)
        assert r.returncode == 0, r.stderr[-4000:]
        runs = json.loads((out / "result.json").read_text())["runs"]
        first = first or runs
        for name, run in runs.items():
            assert close(run["sparse"], run["dense"]) <= TOL, (n, name)
            assert close(run["sparse"], first[name]["dense"]) <= TOL, (n, name)
            # Every round was compact: the exchange moved the touched rows only.
            assert run["round_sizes"] and max(run["round_sizes"]) < run["full_size"] / 2
            if "checkpointed" in run:
                assert close(run["checkpointed"], run["dense"]) <= TOL, (n, name)
            if previous is not None and "checkpointed" in run:
                assert close(run["resumed"], previous[1][name]["checkpointed"]) <= TOL, (n, name)
        previous = (out, runs)
