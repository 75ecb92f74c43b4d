"""Which rows each rank owns, and which rows make up each global batch.

    $ python -m pytest -q tests/test_sharding.py

Everything here is a pure function of (number of rows, number of virtual shards, seed,
epoch, global batch size, plan) plus, for ownership only, (rank, size). That is what
makes training independent of the number of ranks:

* The rows are cut into ``n_shards`` contiguous *virtual shards* (``shard_bounds``).
  The shard count is a setting of the run, not of the allocation.
* Ranks own contiguous runs of whole shards (``owned_shards``), so a rank reads one
  contiguous row range, and validation holds out whole shards.
* ``EpochPlan`` gives every training row a position in the epoch's sample sequence;
  global batch ``k`` is positions ``[k*B, (k+1)*B)``. A rank computes the positions of
  its own rows without seeing anyone else's, and the batch is the same whatever the
  number of ranks.

Every step waits for the rank with the most rows in the batch, so the default plan,
``balanced``, makes every batch a comb over the file. Number the N training rows 0..N-1
in file order; each epoch a shard's rows take its numbers in a new random order. The
partial last batch, R rows, takes R numbers equally spaced (N/R apart, random offset);
full batch w of the F full batches takes the numbers left that are w modulo F (counted
without the partial batch's), and the full batches come in a random order. A rank owns
a contiguous run of N_r numbers, so it holds floor or ceil of B*N_r/N rows of every full
batch (to within the 1/F the partial batch shifts them by) and of R*N_r/N of the partial
one, at every rank count at once. Whole shards make N_r at most about one shard more
than N/P: with at least 100*P^2 rows the slowest rank has at most one row above the
mean, or 1.05x it, for any batch of at least 4 rows per rank. A row meets other rows
only through its number, so the rows that share a batch change from epoch to epoch only
as much as the shards are large: hence at least ``MIN_SHARD_ROWS`` rows a shard.

The ``shuffled`` plan is the one of releases before the balanced plan, kept so that
their checkpoints resume with the same batches: shards visited in a random order, one
row per shard per round. A rank's share of a batch then varies like a hypergeometric
draw (1.28x the mean for the slowest of 4 ranks at batch 64).
"""
from __future__ import annotations

import numpy as np

PLANS = ("balanced", "shuffled")


def chunk(n: int, rank: int = 0, size: int = 1) -> tuple[int, int]:
    """The ``[start, stop)`` range of ``n`` items owned by ``rank`` of ``size``.

    The first ``n % size`` ranks get one extra item; ranks beyond ``n`` get none.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}); got {rank}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


# The balanced plan keeps at least this many rows in a shard: rows change company
# between epochs only inside their shard (a shard's rows take its numbers in a new
# order), so one-row shards would put the same rows together every epoch.
MIN_SHARD_ROWS = 4


def shard_count(n_rows: int, shards: int, plan: str = "balanced") -> int:
    """The number of virtual shards ``n_rows`` rows are cut into under ``--shards``."""
    _check_plan(plan)
    if plan == "balanced":
        return max(1, min(shards, n_rows // MIN_SHARD_ROWS))
    return min(shards, n_rows)


def shard_bounds(n_rows: int, n_shards: int, plan: str = "balanced") -> np.ndarray:
    """Row offsets of every shard: shard ``v`` is rows ``[b[v], b[v+1])``.

    Sizes differ by at most one. The balanced plan spreads the larger shards evenly
    (``b[v] = floor(v * n_rows / n_shards)``), so any run of shards, a rank's among
    them, holds its proportional share of the rows to within one; the shuffled plan
    puts them first, as the releases before it did.
    """
    _check_plan(plan)
    if plan == "balanced":
        return np.arange(n_shards + 1, dtype=np.int64) * n_rows // n_shards
    base, extra = divmod(n_rows, n_shards)
    sizes = np.full(n_shards, base, dtype=np.int64)
    sizes[:extra] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def _check_plan(plan: str):
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {', '.join(PLANS)}; got {plan!r}")


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
        shard held out for validation).
    local_shards : the shard ids whose rows this rank holds, ascending; the rank's
        training rows are these shards' rows, concatenated.
    seed, epoch, batch_size : as in the run's config.
    plan : ``balanced`` (the default) or ``shuffled``; see the module docstring.
    """

    def __init__(self, shard_sizes, local_shards, *, seed: int, epoch: int, batch_size: int,
                 plan: str = "balanced"):
        _check_plan(plan)
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        local_shards = np.asarray(local_shards, dtype=np.int64)
        self.n_train = int(sizes.sum())
        self.batch_size = batch_size
        self.steps = steps_per_epoch(self.n_train, batch_size)
        if plan == "balanced":
            positions = _balanced_positions(sizes, local_shards, seed, epoch, batch_size)
        else:
            positions = _shuffled_positions(sizes, local_shards, seed, epoch)
        self._order = np.argsort(positions, kind="stable")
        self._sorted = positions[self._order]

    def local_indices(self, step: int) -> np.ndarray:
        """Indices into this rank's training rows that belong to global batch ``step``."""
        lo = np.searchsorted(self._sorted, step * self.batch_size, side="left")
        hi = np.searchsorted(self._sorted, (step + 1) * self.batch_size, side="left")
        return self._order[lo:hi]

    def global_count(self, step: int) -> int:
        return batch_count(step, self.n_train, self.batch_size)


def _balanced_positions(sizes, local_shards, seed, epoch, batch_size) -> np.ndarray:
    """The ``balanced`` plan: position of each local training row in the epoch's sequence."""
    local_sizes = sizes[local_shards]
    if local_sizes.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    # The row's number u among all training rows: its shard's first number, plus where
    # this epoch's shuffle of the shard puts it. Keys come from the row's global
    # identity (shard id, offset in shard), not its position on this rank.
    first = np.concatenate([[0], np.cumsum(sizes)])
    shard_of_row = np.repeat(local_shards, local_sizes)
    starts = np.concatenate([[0], np.cumsum(local_sizes)[:-1]])
    offset_in_shard = np.arange(shard_of_row.size) - np.repeat(starts, local_sizes)
    keys = row_keys(shard_of_row * np.int64(1 << 32) + offset_in_shard, seed, epoch,
                    purpose=11)
    # One sort by (shard, key): the local shard's index in the top bits, the key's top
    # bits below it (a tie goes by offset, the same on any rank); several times faster
    # than a lexsort of the two.
    bits = int(local_shards.size).bit_length()
    local = np.repeat(np.arange(local_shards.size, dtype=np.uint64), local_sizes)
    order = np.argsort((local << np.uint64(64 - bits)) | (keys >> np.uint64(bits)),
                       kind="stable")
    slot = np.empty(shard_of_row.size, dtype=np.int64)
    slot[order] = offset_in_shard  # order groups rows by shard (ascending), in key order
    u = first[shard_of_row] + slot
    return _comb_positions(u, int(first[-1]), batch_size, seed, epoch)


def _comb_positions(u, n, b, seed, epoch) -> np.ndarray:
    """Positions of row numbers ``u`` (in [0, n)) such that every batch of ``b`` is a
    comb: its numbers equally spaced over [0, n).

    With F full batches and R = n - F*b rows left for the partial last one: the
    partial batch takes the numbers ``u`` with ``(u*R + t) mod n < R``, one in every
    n/R (``ceil((j*n - t) / R)`` for j = 1..R), and the other F*b numbers, counted
    without those (``v``), make the full batches by residue: batch w is ``v = w, w+F,
    w+2F, ...``. Any run of L numbers then holds floor or ceil of L*R/n of the partial
    batch and, of every full batch, floor or ceil of L*b/n to within 1/F. The offset t
    and the order of the full batches are random per epoch.
    """
    if b >= n:
        return u  # one batch holds every row
    if n * b >= 2**62:
        raise ValueError(f"{n} training rows with batch size {b} exceed the plan's "
                         f"64-bit arithmetic")
    full, rest = divmod(n, b)
    positions = np.empty_like(u)
    v = u
    if rest:
        t = int(_stream(seed, epoch, purpose=12) % np.uint64(n))
        in_last = (u * rest + t) % n < rest
        # How many numbers below u the partial batch takes: the multiples of n that
        # the sequence i*R + t crosses for i in [0, u).
        below = ((u - 1) * rest + t) // n + (1 if t < rest else 0)
        positions[in_last] = full * b + below[in_last]
        v = u - below
    else:
        in_last = np.zeros(u.size, dtype=bool)
    step_of = np.empty(full, dtype=np.int64)
    step_of[np.argsort(row_keys(np.arange(full), seed, epoch, purpose=13), kind="stable")] = \
        np.arange(full)
    offset, window = np.divmod(v[~in_last], full)
    positions[~in_last] = step_of[window] * b + offset
    return positions


def _shuffled_positions(sizes, local_shards, seed, epoch) -> np.ndarray:
    """The ``shuffled`` plan: position of each local training row in the epoch's
    sequence (shards visited in a random order, one row per shard per round)."""
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
