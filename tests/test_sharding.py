"""Sharding and batch planning: pure functions, tested without MPI.

    $ .venv/bin/python -m pytest -q tests/test_sharding.py
"""
import numpy as np
import pytest

from mpi_dml.config import DEFAULTS
from mpi_dml.data import sharding

PLANS = sharding.PLANS


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


def global_batches(n_rows, shards, size, *, seed, epoch, batch_size, val_fraction=0.0,
                   plan="balanced"):
    """Simulate every rank's plan and return, per step, the sorted global row ids."""
    n_shards = sharding.shard_count(n_rows, shards, plan)
    bounds = sharding.shard_bounds(n_rows, n_shards, plan)
    held = sharding.validation_shards(n_shards, val_fraction, seed)
    sizes = np.where(held, 0, np.diff(bounds))
    per_step = None
    for rank in range(size):
        s0, s1 = sharding.owned_shards(n_shards, rank, size)
        mine = np.arange(s0, s1)
        train_shards = mine[~held[mine]]
        rows = np.concatenate([np.arange(bounds[s], bounds[s + 1]) for s in train_shards]) \
            if train_shards.size else np.zeros(0, dtype=np.int64)
        plan_ = sharding.EpochPlan(sizes, train_shards, seed=seed, epoch=epoch,
                                   batch_size=batch_size, plan=plan)
        if per_step is None:
            per_step = [[] for _ in range(plan_.steps)]
        for step in range(plan_.steps):
            per_step[step].extend(rows[plan_.local_indices(step)])
    return [np.sort(np.array(b, dtype=np.int64)) for b in per_step], sizes


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("n_rows,n_shards,batch", [(100, 16, 10), (1797, 1024, 64), (37, 5, 8),
                                                   (5, 5, 2), (1000, 10**6, 40)])
@pytest.mark.parametrize("val_fraction", [0.0, 0.25])
def test_batches_do_not_depend_on_rank_count(n_rows, n_shards, batch, val_fraction, plan):
    reference, sizes = global_batches(n_rows, n_shards, 1, seed=3, epoch=2, batch_size=batch,
                                      val_fraction=val_fraction, plan=plan)
    for size in (2, 3, 4, 7, min(n_shards, n_rows) + 2):
        batches, _ = global_batches(n_rows, n_shards, size, seed=3, epoch=2, batch_size=batch,
                                    val_fraction=val_fraction, plan=plan)
        assert len(batches) == len(reference)
        for got, want in zip(batches, reference):
            np.testing.assert_array_equal(got, want)
    # Every training row exactly once per epoch, batches of exactly the asked size.
    seen = np.concatenate(reference)
    assert seen.size == np.unique(seen).size == sizes.sum()
    assert all(b.size == batch for b in reference[:-1])
    assert 0 < reference[-1].size <= batch


@pytest.mark.parametrize("plan", PLANS)
def test_epochs_and_seeds_shuffle_differently(plan):
    a, _ = global_batches(200, 20, 2, seed=0, epoch=0, batch_size=20, plan=plan)
    b, _ = global_batches(200, 20, 2, seed=0, epoch=1, batch_size=20, plan=plan)
    c, _ = global_batches(200, 20, 2, seed=1, epoch=0, batch_size=20, plan=plan)
    assert not np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("plan", PLANS)
def test_batches_mix_the_whole_file(plan):
    # A file sorted by class must still give batches drawn from everywhere.
    batches, _ = global_batches(1000, 100, 1, seed=0, epoch=0, batch_size=50, plan=plan)
    first = batches[0]
    assert first.min() < 200 and first.max() > 800


# --- the balanced plan: every rank's share of every batch -----------------------------
def batch_of_rows(n_rows, batch, *, shards=DEFAULTS["shards"], plan=DEFAULTS["plan"],
                  seed=0, epoch=0):
    """The global batch of every row (in file order) and the shard bounds, from one
    plan that holds every shard: a row's batch does not depend on who computes it."""
    n_shards = sharding.shard_count(n_rows, shards, plan)
    bounds = sharding.shard_bounds(n_rows, n_shards, plan)
    plan_ = sharding.EpochPlan(np.diff(bounds), np.arange(n_shards), seed=seed, epoch=epoch,
                               batch_size=batch, plan=plan)
    step = np.empty(n_rows, dtype=np.int64)
    for k in range(plan_.steps):
        step[plan_.local_indices(k)] = k
    return step, bounds


def shares(step, bounds, size, keys=None):
    """Rows of each batch on each of ``size`` ranks (whole shards, ``owned_shards``), and
    the rows each rank holds. ``keys``: ``batch_keys(step)``, if already at hand."""
    n, steps = step.size, int(step.max()) + 1
    keys = batch_keys(step) if keys is None else keys
    firsts = [sharding.owned_shards(bounds.size - 1, r, size)[0] for r in range(size)]
    edges = bounds[firsts + [bounds.size - 1]]  # each rank's first row, and n
    found = np.searchsorted(keys, np.arange(steps)[:, None] * n + edges[None, :])
    return np.diff(found, axis=1), np.diff(edges)


def batch_keys(step):
    """Rows grouped by batch, in file order within each: batch * n + row, sorted."""
    return np.sort(step * step.size + np.arange(step.size))


def assert_balanced(n_rows, batch, sizes, **plan):
    """Every batch, at every rank count in ``sizes``: the slowest rank has at most 1.05x
    the mean, or at most one row above it."""
    step, bounds = batch_of_rows(n_rows, batch, **plan)
    keys = batch_keys(step)
    for size in sizes:
        counts, _ = shares(step, bounds, size, keys)
        mean = counts.sum(axis=1) / size
        worst = counts.max(axis=1)
        bad = np.flatnonzero(worst > np.maximum(1.05 * mean, mean + 1) + 1e-9)
        assert bad.size == 0, (f"{n_rows} rows, batch {batch}, {size} ranks: batch {bad[0]} "
                               f"gives the slowest rank {worst[bad[0]]} rows, mean "
                               f"{mean[bad[0]]:.2f} ({worst[bad[0]] / mean[bad[0]]:.2f}x)")


@pytest.mark.parametrize("n_rows,batch,max_size", [
    (500_000, 256, 64), (500_000, 1279, 64), (40_000, 63, 16), (40_000, 319, 16),
    (2000, 64, 4), (2000, 95, 4),
])
def test_every_rank_gets_an_equal_share_of_every_batch(n_rows, batch, max_size):
    # Every rank count up to max_size that leaves at least 4 rows of a batch per rank.
    # The batch sizes put B/P just below whole numbers (1279/64 = 19.98, 256/43 = 5.95,
    # 319/16 = 19.94), where a rank that holds a little more than N/P of the rows (its
    # share is whole shards of at least 4 rows) gets one row too many: at least 120 P^2
    # rows keep that share close enough.
    assert_balanced(n_rows, batch, [p for p in range(1, max_size + 1) if batch >= 4 * p])


def test_every_rank_gets_an_equal_share_at_4_and_16_ranks():
    # The two cases where the shuffled plan (1024 shards) gives the slowest rank 1.28x
    # and 1.45x the mean on average, and 2x and 2.75x at worst.
    assert_balanced(200_000, 64, [4])
    assert_balanced(200_000, 256, [16])


@pytest.mark.parametrize("n_rows,batch,shards", [
    (1000, 50, 131072), (1797, 64, 131072), (20_000, 300, 1024), (5003, 97, 64), (12, 5, 3),
    (100, 100, 8), (5000, 7, 131072),
])
def test_each_rank_holds_its_proportional_share_of_every_batch(n_rows, batch, shards):
    """Small data, small batches: the guarantee behind the bound. A rank that holds N_r
    of the N training rows has floor or ceil of B*N_r/N rows of every full batch (to
    within the 1/F that the F full batches shift by), and floor or ceil of R*N_r/N of
    the partial batch of R rows."""
    step, bounds = batch_of_rows(n_rows, batch, shards=shards)
    full, rest = divmod(n_rows, batch)
    keys = batch_keys(step)
    for size in range(1, 65):
        counts, held = shares(step, bounds, size, keys)
        if full:
            want = batch * held / n_rows
            got = counts[:full]
            assert (got >= np.floor(want - 1 / full - 1e-9)).all()
            assert (got <= np.ceil(want + 1 / full + 1e-9)).all()
        if rest:
            want = rest * held / n_rows
            assert (counts[full] >= np.floor(want)).all()
            assert (counts[full] <= np.ceil(want)).all()


def test_a_file_sorted_by_label_gives_every_batch_every_label():
    # 10 labels of 1000 rows each, in order: every full batch of 50 has 5 of each, give
    # or take one, whatever the epoch.
    label = np.arange(10_000) // 1000
    for epoch in range(3):
        step, _ = batch_of_rows(10_000, 50, seed=4, epoch=epoch)
        per_label = np.bincount(step * 10 + label, minlength=10 * (step.max() + 1))
        per_label = per_label.reshape(-1, 10)
        assert per_label.min() >= 4 and per_label.max() <= 6, per_label


def pairs_together(*steps) -> int:
    """Pairs of rows that share a batch in every one of the given epochs."""
    joint = np.unique(np.stack(steps), axis=1, return_counts=True)[1]
    return int((joint * (joint - 1) // 2).sum())


@pytest.mark.parametrize("n_rows,batch", [(1000, 50), (10_000, 64), (600_000, 512)])
def test_rows_that_share_a_batch_change_from_epoch_to_epoch(n_rows, batch):
    # Each shard's rows take its numbers in a new order each epoch, so a pair that met
    # meets again in the next epoch about one time in the rows per shard (4 here, at
    # least), against every time if the batches were fixed.
    a, _ = batch_of_rows(n_rows, batch, seed=1, epoch=0)
    b, _ = batch_of_rows(n_rows, batch, seed=1, epoch=1)
    assert pairs_together(a, b) < 0.35 * pairs_together(a)


def test_balanced_shards_spread_the_larger_ones():
    # 10 rows in 4 shards: sizes 2, 3, 2, 3, so any run of k shards holds 10k/4 rows to
    # within one; the shuffled plan put the larger shards first.
    np.testing.assert_array_equal(sharding.shard_bounds(10, 4), [0, 2, 5, 7, 10])
    np.testing.assert_array_equal(sharding.shard_bounds(10, 4, "shuffled"), [0, 3, 6, 8, 10])


@pytest.mark.parametrize("n_rows,shards,plan,want", [
    (10**6, 131072, "balanced", 131072), (1000, 131072, "balanced", 250),
    (3, 131072, "balanced", 1), (1000, 64, "balanced", 64),
    (1000, 1024, "shuffled", 1000), (10**6, 1024, "shuffled", 1024),
])
def test_shard_count(n_rows, shards, plan, want):
    assert sharding.shard_count(n_rows, shards, plan) == want


def test_the_shuffled_plan_keeps_the_batches_of_earlier_releases():
    # Written by mpi_dml before the balanced plan (commit 1029336): 11 rows, 4 shards,
    # batch 4, every shard on one rank, indices in the order that release gave them.
    sizes = np.diff(sharding.shard_bounds(11, 4, "shuffled"))
    for seed, epoch, want in [(5, 1, [[4, 2, 10, 7], [3, 0, 9, 6], [5, 1, 8]]),
                              (0, 0, [[4, 2, 8, 9], [3, 1, 7, 10], [5, 0, 6]])]:
        plan = sharding.EpochPlan(sizes, np.arange(4), seed=seed, epoch=epoch, batch_size=4,
                                  plan="shuffled")
        assert [plan.local_indices(k).tolist() for k in range(plan.steps)] == want


def test_an_unknown_plan_is_refused():
    with pytest.raises(ValueError, match="plan must be one of balanced, shuffled"):
        sharding.shard_bounds(10, 2, "random")


# --- validation and counts --------------------------------------------------------------
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
