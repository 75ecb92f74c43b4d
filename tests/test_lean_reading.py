"""A rank's rows read lean: straight into the training dtype a bounded block at a time,
validation split off in place, scaled in place. One process."""
import tracemalloc

import numpy as np
import pytest

from mpi_dml.config import TrainConfig
from mpi_dml.data.formats import open_table
from mpi_dml.data.labels import Split, read_split
from mpi_dml.data.standardize import scaled
from mpi_dml.data.training import load_training, split_off_validation
from mpi_dml.errors import UserError
from mpi_dml.parallel.comm import Comm


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


def write_csv(path, x, y, fmt="%.6f"):
    names = [f"f{j}" for j in range(x.shape[1])]
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", fmt=fmt,
               header=",".join(names + ["label"]), comments="")
    return path


@pytest.mark.parametrize("sizes,held", [
    ([3, 3, 2, 2], [False, True, False, False]),
    ([5, 0, 4, 4, 4], [True, False, False, True, False]),
    ([1] * 7, [True] * 3 + [False] * 4),
    ([40000, 39999, 40000], [False, True, False]),   # runs longer than one move
])
def test_validation_split_matches_boolean_selection(sizes, held):
    sizes, held = np.array(sizes), np.array(held)
    n = int(sizes.sum())
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, 3)), rng.normal(size=n)
    take = np.repeat(~held, sizes)
    want_train, want_val = (x[take], y[take]), (x[~take], y[~take])
    train, val = split_off_validation(Split(x, y), held, sizes)
    np.testing.assert_array_equal(train.x, want_train[0])
    np.testing.assert_array_equal(train.y, want_train[1])
    np.testing.assert_array_equal(val.x, want_val[0])
    np.testing.assert_array_equal(val.y, want_val[1])
    assert np.shares_memory(train.x, x)  # in place: no second copy of the rows


def test_float32_rows_are_read_as_float32(tmp_path, comm):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 4)), rng.integers(0, 3, 300)
    path = write_csv(tmp_path / "d.csv", x, y)
    table = open_table(path, comm)
    want = np.loadtxt(path, delimiter=",", skiprows=1)
    got = read_split(table, 10, 290, [0, 1, 2, 3], 4, dtype=np.float32)
    assert got.x.dtype == np.float32 and got.x.flags.c_contiguous
    np.testing.assert_array_equal(got.x, want[10:290, :4].astype(np.float32))
    np.testing.assert_array_equal(got.y, want[10:290, 4])


def test_value_too_large_for_float32_is_named(tmp_path, comm):
    x = np.ones((5, 2))
    x[3, 1] = 1e39
    path = write_csv(tmp_path / "d.csv", x, np.zeros(5), fmt="%g")
    table = open_table(path, comm)
    with pytest.raises(UserError, match=r"d.csv line 5: feature column 'f1' holds 1e\+39, "
                                        r"which is too large for --dtype float32"):
        read_split(table, 0, 5, [0, 1], 2, dtype=np.float32)
    assert np.isfinite(read_split(table, 0, 5, [0, 1], 2, dtype=np.float64).x).all()


def test_blocks_are_bounded(tmp_path, comm):
    x = np.arange(6000.0).reshape(2000, 3)
    np.save(tmp_path / "d.npy", x)
    rows = open_table(tmp_path / "d.npy", comm).rows(5, 1995)
    blocks = list(rows.blocks(max_cells=300))
    assert max(len(b) for _, b in blocks) == 100
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), x[5:1995])
    assert [first for first, _ in blocks] == list(range(5, 1995, 100))


def test_scaled_in_place_matches_a_fresh_copy():
    rng = np.random.default_rng(2)
    x = rng.normal(3, 2, size=(20000, 5)).astype(np.float32)
    mean, std = x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64)
    want = ((x.astype(np.float64) - mean) / std).astype(np.float32)
    got = scaled(x, np.float32, (mean, std), in_place=True)
    assert got is x or np.shares_memory(got, x)
    np.testing.assert_array_equal(got, want)


def test_rank_rows_peak_memory_is_lean(tmp_path, comm):
    """The largest allocation while loading, over the rows' bytes in the training dtype,
    measured by tracemalloc (NumPy reports its buffers to it): at most 1.5x, with a
    validation split and a float32 run. Reading everything as float64 first and
    slicing the label off took 4.6x."""
    rng = np.random.default_rng(3)
    n, d = 100_000, 20
    path = write_csv(tmp_path / "d.csv", rng.normal(size=(n, d)), rng.integers(0, 2, n))
    cfg = TrainConfig(data=str(path), label_column="label", out=str(tmp_path / "o"),
                      model="logistic", dtype="float32", val_fraction=0.1)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        data = load_training(cfg, comm)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    rows_bytes = n * (d * 4 + 8)  # features in float32, labels in float64
    assert data.train.x.dtype == np.float32
    assert data.n_train + data.n_val == n
    assert peak <= 1.5 * rows_bytes, f"peak {peak / rows_bytes:.2f}x the rows' bytes"
