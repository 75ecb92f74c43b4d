"""Sharding and batch planning: pure functions, tested without MPI."""
import numpy as np
import pytest

from mpi_dml.data import sharding


@pytest.mark.parametrize("n", [0, 1, 7, 10, 1797])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 13])
def test_chunk_covers_every_item_once(n, size):
    ranges = [sharding.chunk(n, r, size) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    lengths = [hi - lo for lo, hi in ranges]
    assert max(lengths) - min(lengths) <= 1


def test_chunk_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank must be in"):
        sharding.chunk(10, 3, 3)


def global_batches(n_rows, n_shards, size, *, seed, epoch, batch_size, val_fraction=0.0):
    """Simulate every rank's plan and return, per step, the sorted global row ids."""
    bounds = sharding.shard_bounds(n_rows, n_shards)
    held = sharding.validation_shards(n_shards, val_fraction, seed)
    sizes = np.where(held, 0, np.diff(bounds))
    per_step = None
    for rank in range(size):
        s0, s1 = sharding.owned_shards(n_shards, rank, size)
        mine = np.arange(s0, s1)
        train_shards = mine[~held[mine]]
        rows = np.concatenate([np.arange(bounds[s], bounds[s + 1]) for s in train_shards]) \
            if train_shards.size else np.zeros(0, dtype=np.int64)
        plan = sharding.EpochPlan(sizes, train_shards, seed=seed, epoch=epoch, batch_size=batch_size)
        if per_step is None:
            per_step = [[] for _ in range(plan.steps)]
        for step in range(plan.steps):
            per_step[step].extend(rows[plan.local_indices(step)])
    return [np.sort(np.array(b, dtype=np.int64)) for b in per_step], sizes


@pytest.mark.parametrize("n_rows,n_shards,batch", [(100, 16, 10), (1797, 1024, 64), (37, 5, 8), (5, 5, 2)])
@pytest.mark.parametrize("val_fraction", [0.0, 0.25])
def test_batches_do_not_depend_on_rank_count(n_rows, n_shards, batch, val_fraction):
    reference, sizes = global_batches(n_rows, n_shards, 1, seed=3, epoch=2, batch_size=batch,
                                      val_fraction=val_fraction)
    for size in (2, 3, 4, 7, n_shards + 2):
        batches, _ = global_batches(n_rows, n_shards, size, seed=3, epoch=2, batch_size=batch,
                                    val_fraction=val_fraction)
        assert len(batches) == len(reference)
        for got, want in zip(batches, reference):
            np.testing.assert_array_equal(got, want)
    # Every training row exactly once per epoch, batches of exactly the asked size.
    seen = np.concatenate(reference)
    assert seen.size == np.unique(seen).size == sizes.sum()
    assert all(b.size == batch for b in reference[:-1])
    assert 0 < reference[-1].size <= batch


def test_epochs_and_seeds_shuffle_differently():
    a, _ = global_batches(200, 20, 2, seed=0, epoch=0, batch_size=20)
    b, _ = global_batches(200, 20, 2, seed=0, epoch=1, batch_size=20)
    c, _ = global_batches(200, 20, 2, seed=1, epoch=0, batch_size=20)
    assert not np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_batches_mix_the_whole_file():
    # A file sorted by class must still give batches drawn from everywhere.
    batches, _ = global_batches(1000, 100, 1, seed=0, epoch=0, batch_size=50)
    first = batches[0]
    assert first.min() < 200 and first.max() > 800


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.5])
def test_validation_shards_fraction(fraction):
    mask = sharding.validation_shards(100, fraction, seed=4)
    assert mask.sum() == round(fraction * 100)
    np.testing.assert_array_equal(mask, sharding.validation_shards(100, fraction, seed=4))


def test_validation_keeps_at_least_one_training_shard():
    assert sharding.validation_shards(2, 0.9, seed=0).sum() == 1


def test_step_counts():
    assert sharding.steps_per_epoch(10, 3) == 4
    assert [sharding.batch_count(s, 10, 3) for s in range(4)] == [3, 3, 3, 1]
