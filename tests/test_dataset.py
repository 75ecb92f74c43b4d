"""A rank's rows as the model sees them: which columns are features, and scaling.

Pure functions, one process; the end-to-end behaviour is in test_features_mpi.py.
"""
import numpy as np
import pytest

from mpi_dml.data import formats as sources
from mpi_dml.parallel.comm import Comm
from mpi_dml.data.columns import choose_columns
from mpi_dml.data.standardize import negligible_spread, standardization
from mpi_dml.errors import UserError


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


def near_constant(n, value=0.1, seed=0):
    """``value`` give or take an ulp, as arithmetic or a text round trip leaves it."""
    rng = np.random.default_rng(seed)
    col = np.full(n, value)
    col[rng.random(n) < 0.3] = np.nextafter(value, 1.0)
    col[rng.random(n) < 0.2] = np.nextafter(value, -1.0)
    return col


def test_standardization_matches_scikit_learn(comm):
    """Means and scales as StandardScaler computes them, near-constant columns included."""
    StandardScaler = pytest.importorskip("sklearn.preprocessing").StandardScaler
    rng = np.random.default_rng(1)
    n = 500
    x = np.column_stack([rng.normal(3, 2, n), near_constant(n), np.full(n, 7.0),
                         rng.normal(0, 1e-3, n) + 1e6, near_constant(n, -2.5e9, seed=3),
                         np.zeros(n)])
    mean, std = standardization(x, comm)
    ref = StandardScaler().fit(x)
    np.testing.assert_allclose(mean, ref.mean_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(std, ref.scale_, rtol=1e-9)
    assert std[1] == std[2] == std[4] == std[5] == 1.0  # constant in all but rounding
    assert std[3] != 1.0  # a tiny real spread on a large offset is kept


def test_near_constant_column_cannot_blow_up_a_new_value(comm):
    x = near_constant(1000)[:, None]
    assert 0 < x.std() < 1e-16
    mean, std = standardization(x, comm)
    assert abs((0.2 - mean[0]) / std[0]) < 1  # before: (0.2 - 0.1) / 1e-17 = 1e16


@pytest.mark.parametrize("var,mean,n,expected", [
    (0.0, 0.0, 10, True),
    (1e-34, 0.1, 569, True),
    (1e-20, 0.1, 569, False),
    (1e-6, 1e6, 10, False),
])
def test_negligible_spread(var, mean, n, expected):
    assert negligible_spread(np.array([var]), np.array([mean]), n)[0] == expected


def write_npz(path):
    np.savez(path, X=np.ones((5, 3)), feature_names=np.array(["a", "b", "c"]),
             y=np.arange(5) % 2, row_id=np.arange(5), weight=np.ones(5))
    return path


def test_default_features_leave_other_arrays_out_and_name_them(comm, tmp_path):
    table = sources.open_table(write_npz(tmp_path / "d.npz"), comm)
    features, label, unused = choose_columns(table, "y", ())
    assert [table.columns[i] for i in features] == ["a", "b", "c"]
    assert table.columns[label] == "y" and unused == ["row_id", "weight"]


def test_named_features_come_in_the_named_order(comm, tmp_path):
    table = sources.open_table(write_npz(tmp_path / "d.npz"), comm)
    features, _, unused = choose_columns(table, "y", ("weight", "a"))
    assert [table.columns[i] for i in features] == ["weight", "a"]
    assert unused == ["b", "c", "row_id"]


def test_csv_default_is_every_column_but_the_label(comm, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label,b\n1,0,2\n")
    table = sources.open_table(path, comm)
    assert choose_columns(table, "label", ()) == ([0, 2], 1, [])


@pytest.mark.parametrize("features,label,message", [
    (("a", "nope"), "y", r"has no column named 'nope' \(in --features\)"),
    (("a", "y"), "y", r"--features names the label column 'y'"),
    ((), "missing", r"has no column named 'missing'"),
])
def test_column_choice_errors(comm, tmp_path, features, label, message):
    table = sources.open_table(write_npz(tmp_path / "d.npz"), comm)
    with pytest.raises(UserError, match=message):
        choose_columns(table, label, features)
