"""The rank counts the MPI tests run at (tests/conftest.py, MPI_DML_TEST_RANKS).

    $ python -m pytest -q tests/test_launcher.py
"""
import pytest

from conftest import RANKS_ENV, ranks_to_test


@pytest.mark.parametrize("text, ranks", [("", (1, 2, 3, 4)), ("2", (2,)), (" 1,3 ", (1, 3))])
def test_rank_counts(text, ranks):
    assert ranks_to_test({RANKS_ENV: text}) == ranks
    assert ranks_to_test({}) == (1, 2, 3, 4)


@pytest.mark.parametrize("text", ["two", "0", "2,", ","])
def test_bad_rank_counts_are_refused(text):
    with pytest.raises(pytest.UsageError, match=f"{RANKS_ENV}=.* must list rank counts >= 1"):
        ranks_to_test({RANKS_ENV: text})
