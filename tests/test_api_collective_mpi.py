"""API calls end the same way on every rank, whatever one rank meets (real mpiexec).

A rank that raises while the others go on leaves them waiting in the next collective
for ever; these cases once did. Each run must end within its timeout with every rank
holding the same outcome.
"""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, run_mpi

pytestmark = pytest.mark.mpi

SCRIPT = ROOT / "tests" / "mpi_scripts" / "api_collective.py"


def outcomes(n, case, tmp_path) -> list:
    out = tmp_path / case
    result = run_mpi(n, [SCRIPT, case, out], timeout=90)
    assert result.returncode == 0, result.stderr
    return [json.loads((tmp_path / f"{case}.rank{r}.json").read_text()) for r in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_write_that_fails_on_rank_0_stops_every_rank(tmp_path, n):
    got = outcomes(n, "blocked_metrics", tmp_path)
    assert all(g == got[0] for g in got), got
    kind, message = got[0]["error"]
    assert "cannot write ranks.json and metrics.jsonl" in message and "Is a directory" in message


@pytest.mark.parametrize("n", [2, 3])
def test_text_in_one_ranks_rows_is_refused_on_every_rank(tmp_path, n):
    got = outcomes(n, "text_on_one_rank", tmp_path)
    assert all(g == got[0] for g in got), got
    kind, message = got[0]["error"]
    assert "The 'X' parameter of mpi_dml.train must hold numbers" in message
    assert f"rank {n - 1}" in message


@pytest.mark.parametrize("n", [2, 3])
def test_a_random_state_advances_alike_on_every_rank(tmp_path, n):
    """KFold(shuffle=True, random_state=rs) after a fit must split alike on every rank."""
    import numpy as np
    got = outcomes(n, "random_state", tmp_path)
    expected = np.random.RandomState(0)
    expected.randint(np.iinfo(np.int32).max)  # what fit drew
    assert [g["next_draw"] for g in got] == [int(expected.randint(1000))] * n, got
