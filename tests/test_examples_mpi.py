"""The examples in examples/ run as their docstrings say, on any number of ranks."""
import json

import numpy as np
import pytest

from conftest import ROOT, RANKS, run_cli, run_mpi

pytestmark = pytest.mark.mpi


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_digits_api_gives_one_model_on_any_rank_count(tmp_path):
    """The same held-out accuracy at every rank count, and the CLI's evaluate of the
    saved folder on the same held-out rows agrees with the API's collective score."""
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    scores = {}
    for n in RANKS:
        out = tmp_path / f"n{n}"
        r = run_mpi(n, [ROOT / "examples" / "digits_api.py", out], timeout=300)
        assert r.returncode == 0, r.stderr
        scores[n] = last_json(r.stdout)
        assert scores[n]["accuracy"] > 0.85
    assert len({s["accuracy"] for s in scores.values()}) == 1, scores
    X, y = load_digits(return_X_y=True)
    held = tmp_path / "held.csv"
    header = ",".join([f"x{i}" for i in range(64)] + ["label"])
    np.savetxt(held, np.column_stack([X[1500:], y[1500:]]), delimiter=",", header=header,
               comments="", fmt="%g")
    n = RANKS[-1]
    r = run_cli(n, "evaluate", "--model", tmp_path / f"n{n}", "--data", held, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(scores[n]["accuracy"], abs=1e-12)
