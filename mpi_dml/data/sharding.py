"""Which rows each rank owns, and which rows make up each global batch.

Everything here is a pure function of (number of rows, number of virtual shards, seed,
epoch, global batch size) plus, for ownership only, (rank, size). That is what makes
training independent of the number of ranks:

* The rows are cut into ``n_shards`` contiguous *virtual shards* (``chunk``). The shard
  count is a setting of the run, not of the allocation.
* Ranks own contiguous runs of whole shards, so a rank reads one contiguous row range.
* Each epoch, every shard shuffles its own rows and the shards are visited in a
  shuffled order, one row per shard per round. Position ``p`` of that sequence is the
  ``p``-th sample of the epoch; global batch ``k`` is positions ``[k*B, (k+1)*B)``.
  A rank computes the positions of its own rows without seeing anyone else's, and the
  batch is the same whatever the number of ranks.

Shard sizes differ by at most one (``chunk``), so every round but the last visits every
training shard; the last round visits the shards that hold one extra row.
"""
from __future__ import annotations

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def chunk(n: int, rank: int = 0, size: int = 1) -> tuple[int, int]:
    """The ``[start, stop)`` range of ``n`` items owned by ``rank`` of ``size``.

    The first ``n % size`` ranks get one extra item; ranks beyond ``n`` get none.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}); got {rank}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_bounds(n_rows: int, n_shards: int) -> np.ndarray:
    """Row offsets of every shard: shard ``v`` is rows ``[b[v], b[v+1])``."""
    base, extra = divmod(n_rows, n_shards)
    sizes = np.full(n_shards, base, dtype=np.int64)
    sizes[:extra] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def owned_shards(n_shards: int, rank: int = 0, size: int = 1) -> tuple[int, int]:
    """The ``[first, stop)`` shard range of ``rank``: whole shards, contiguous."""
    return chunk(n_shards, rank, size)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a cheap bijective hash, vectorised over uint64 arrays."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _stream(seed: int, epoch: int, purpose: int) -> np.uint64:
    """A 64-bit key that separates (seed, epoch, purpose) streams."""
    with np.errstate(over="ignore"):
        key = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        key = _mix(np.array([key ^ np.uint64(0x9E3779B97F4A7C15)], dtype=np.uint64))[0]
        key = _mix(np.array([key + np.uint64(epoch + 1)], dtype=np.uint64))[0]
        return _mix(np.array([key + np.uint64(purpose) * np.uint64(0x632BE59BD9B4E019)]))[0]


def row_keys(rows: np.ndarray, seed: int, epoch: int, purpose: int = 1) -> np.ndarray:
    """Pseudo-random uint64 key for each global row index; depends on nothing else."""
    key = _stream(seed, epoch, purpose)
    with np.errstate(over="ignore"):
        return _mix(rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key)


def validation_shards(n_shards: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the shards held out for validation (whole shards, by seed)."""
    n_val = int(round(fraction * n_shards))
    if fraction > 0 and n_shards > 1:
        n_val = min(max(n_val, 1), n_shards - 1)
    order = np.argsort(row_keys(np.arange(n_shards), seed, -1, purpose=7), kind="stable")
    mask = np.zeros(n_shards, dtype=bool)
    mask[order[:n_val]] = True
    return mask


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Every row is seen once per epoch; the last batch may be smaller."""
    return -(-n_train // batch_size)


def batch_count(step: int, n_train: int, batch_size: int) -> int:
    """True number of samples in global batch ``step`` of an epoch."""
    return max(0, min(batch_size, n_train - step * batch_size))


class EpochPlan:
    """The samples one rank contributes to each global batch of one epoch.

    Parameters
    ----------
    shard_sizes : int array, one entry per virtual shard (training rows; 0 for a
        shard held out for validation or owned by nobody).
    local_shards : the shard ids whose rows this rank holds, in file order; the rank's
        training rows are these shards' rows, concatenated.
    seed, epoch, batch_size : as in the run's config.
    """

    def __init__(self, shard_sizes, local_shards, *, seed: int, epoch: int, batch_size: int):
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        local_shards = np.asarray(local_shards, dtype=np.int64)
        self.n_train = int(sizes.sum())
        self.batch_size = batch_size
        self.steps = steps_per_epoch(self.n_train, batch_size)
        positions = _positions(sizes, local_shards, seed, epoch)
        self._order = np.argsort(positions, kind="stable")
        self._sorted = positions[self._order]

    def local_indices(self, step: int) -> np.ndarray:
        """Indices into this rank's training rows that belong to global batch ``step``."""
        lo = np.searchsorted(self._sorted, step * self.batch_size, side="left")
        hi = np.searchsorted(self._sorted, (step + 1) * self.batch_size, side="left")
        return self._order[lo:hi]

    def global_count(self, step: int) -> int:
        return batch_count(step, self.n_train, self.batch_size)


def _positions(sizes, local_shards, seed, epoch) -> np.ndarray:
    """Position in the epoch's global sample sequence of each local training row."""
    active = np.flatnonzero(sizes > 0)
    if active.size == 0 or local_shards.size == 0:
        return np.zeros(0, dtype=np.int64)
    q = int(sizes[active].min())
    if int(sizes[active].max()) - q > 1:
        raise ValueError("training shard sizes must differ by at most one")
    # Visiting order of the active shards this epoch, and of the larger ones in the
    # final partial round (same relative order).
    visit = active[np.argsort(row_keys(active, seed, epoch, purpose=3), kind="stable")]
    rank_in_round = np.full(sizes.size, -1, dtype=np.int64)
    rank_in_round[visit] = np.arange(visit.size)
    big = visit[sizes[visit] > q]
    rank_in_last = np.full(sizes.size, -1, dtype=np.int64)
    rank_in_last[big] = np.arange(big.size)

    local_sizes = sizes[local_shards]
    shard_of_row = np.repeat(local_shards, local_sizes)
    starts = np.concatenate([[0], np.cumsum(local_sizes)[:-1]])
    if shard_of_row.size == 0:
        return np.zeros(0, dtype=np.int64)
    # Within-shard shuffle: row r's round is its rank among its shard's keys. Keys
    # come from the row's global identity (shard id, offset in shard), not its
    # position on this rank.
    offset_in_shard = np.arange(shard_of_row.size) - np.repeat(starts, local_sizes)
    ident = shard_of_row * np.int64(1 << 32) + offset_in_shard
    keys = row_keys(ident, seed, epoch, purpose=5)
    order = np.lexsort((keys, shard_of_row))
    round_of_row = np.empty(shard_of_row.size, dtype=np.int64)
    round_of_row[order] = offset_in_shard  # order groups rows by shard, in key order
    n_active = active.size
    full = round_of_row < q
    return np.where(
        full,
        round_of_row * n_active + rank_in_round[shard_of_row],
        q * n_active + rank_in_last[shard_of_row],
    )
