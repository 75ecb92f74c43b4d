"""Sparse rows on their way to training: CSR from memory or a file, split off
validation in place, scaled without centring. Pure functions on one rank; rows moved
between ranks under real mpiexec.

    $ python -m pytest -q tests/test_sparse_data.py
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import RANKS, ROOT, run_mpi
from mpi_dml.config import TrainConfig
from mpi_dml.data import sharding
from mpi_dml.data.arrays import SparseArrayTable
from mpi_dml.data.labels import Split, read_sparse_split
from mpi_dml.data.standardize import scaled, standardization
from mpi_dml.data.training import load_training, split_off_validation
from mpi_dml.errors import AgreedError, UserError
from mpi_dml.parallel.comm import Comm

SCRIPT = ROOT / "tests" / "mpi_scripts" / "sparse_rows.py"


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


def random_csr(rows, cols, density=0.05, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = sp.random(rows, cols, density=density, format="csr", random_state=rng,
                  data_rvs=lambda n: rng.normal(3.0, 2.0, n))
    return x.astype(dtype)


def test_standardization_matches_scikit_learn_without_centring(comm):
    from sklearn.preprocessing import StandardScaler

    x = random_csr(500, 40)
    x = (x @ sp.diags(np.r_[np.ones(7), 0.0, np.ones(32)])).tocsr()
    x.eliminate_zeros()  # column 7 has no stored value: left unscaled
    mean, std = standardization(x, comm)
    ref = StandardScaler(with_mean=False).fit(x)
    assert np.array_equal(mean, np.zeros(40))
    np.testing.assert_allclose(std, ref.scale_, rtol=1e-12)
    out = scaled(x.copy(), np.float64, (mean, std))
    assert sp.issparse(out) and out.nnz == x.nnz
    np.testing.assert_allclose(out.toarray(), ref.transform(x).toarray(), rtol=1e-12)


def test_scaling_in_place_shares_the_rows_arrays():
    x = random_csr(300, 20, dtype=np.float32)
    std = np.linspace(0.5, 2.0, 20)
    expected = (x.toarray().astype(np.float64) / std).astype(np.float32)
    out = scaled(x, np.float32, (np.zeros(20), std), in_place=True)
    assert np.shares_memory(out.data, x.data)  # scaled where the rows lie
    assert np.shares_memory(out.indices, x.indices)
    np.testing.assert_array_equal(out.toarray(), expected)


def test_a_centring_model_is_refused_on_sparse_rows():
    x = random_csr(10, 4)
    with pytest.raises(UserError, match="centres its features"):
        scaled(x, np.float64, (np.ones(4), np.ones(4)))


def test_validation_split_of_csr_matches_the_dense_split_in_place():
    sizes = np.array([5, 4, 6, 0, 3, 7])
    held = np.array([False, True, False, False, True, False])
    x = random_csr(int(sizes.sum()), 30, density=0.2, seed=3)
    y = np.arange(x.shape[0], dtype=np.float64)
    dense_train, dense_val = split_off_validation(Split(x.toarray(), y.copy()), held, sizes)
    data_before = x.data
    train, val = split_off_validation(Split(x, y.copy()), held, sizes)
    assert sp.issparse(train.x) and sp.issparse(val.x)
    np.testing.assert_array_equal(train.x.toarray(), dense_train.x)
    np.testing.assert_array_equal(val.x.toarray(), dense_val.x)
    np.testing.assert_array_equal(train.y, dense_train.y)
    np.testing.assert_array_equal(val.y, dense_val.y)
    assert np.shares_memory(train.x.data, data_before)  # moved, not copied


def test_load_training_keeps_rows_sparse_and_checks_labels(comm):
    x = random_csr(200, 1 << 20, density=4e-5, seed=1)
    y = (np.arange(200) % 3).astype(np.float64)
    cfg = TrainConfig(model="softmax", label_column="label", shards=16, val_fraction=0.25)
    data = load_training(cfg, comm, SparseArrayTable(x, y, comm))
    assert data.feature_names is None and data.n_features == 1 << 20
    assert sp.issparse(data.train.x) and data.train.x.dtype == np.float32
    assert data.n_classes == 3 and data.n_train + data.n_val == 200
    # The training rows are the ones the plan keeps, in file order.
    bounds = sharding.shard_bounds(200, 16)
    held = sharding.validation_shards(16, 0.25, cfg.seed)
    keep = np.repeat(~held, np.diff(bounds))
    np.testing.assert_array_equal(data.train.x.toarray(),
                                  x[np.flatnonzero(keep)].toarray().astype(np.float32))
    np.testing.assert_array_equal(data.train.y, y[keep])

    bad = y.copy()
    bad[17] = 1.5
    with pytest.raises(AgreedError, match=r"row 17 of rank 0: class label 1.5 is not an integer"):
        load_training(cfg, comm, SparseArrayTable(x, bad, comm))


def test_a_value_too_large_for_float32_is_named(comm):
    x = sp.csr_matrix(np.array([[0.0, 1.0], [0.0, 0.0], [3e39, 2.0]]))
    table = SparseArrayTable(x, np.zeros(3), comm)
    with pytest.raises(AgreedError, match=r"row 2 of rank 0: feature 0 holds 3e\+39; it is "
                                          r"too large for --dtype float32"):
        read_sparse_split(table, 0, 3, dtype=np.float32)


@pytest.mark.mpi
@pytest.mark.parametrize("n", RANKS)
def test_rows_move_between_ranks_unchanged(n, tmp_path):
    """Each rank holds an uneven share; every rank asks for rows others hold."""
    result = run_mpi(n, [SCRIPT, tmp_path], timeout=120)
    assert result.returncode == 0, result.stderr
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(n)]
    x = sp.load_npz(tmp_path / "x.npz")
    y = np.load(tmp_path / "y.npy")
    for r, part in enumerate(got):
        lo, hi = part["lo"], part["hi"]
        assert (lo, hi) == sharding.chunk(x.shape[0], (r + 1) % n, n)
        np.testing.assert_array_equal(np.array(part["dense"]).reshape(hi - lo, -1),
                                      x[lo:hi].toarray())
        np.testing.assert_array_equal(part["y"], y[lo:hi])
