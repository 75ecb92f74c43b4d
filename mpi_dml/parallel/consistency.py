"""Catch ranks that silently disagree, and gradients that stopped being numbers.

Every rank applies the same update to the same summed gradient, so their parameters
stay equal bit for bit. If they ever differ (a rank that skipped a step, a flipped bit,
a library that reduces differently on some node), training goes on without a word and
the saved model is whatever rank 0 happened to hold. Comparing a CRC-32 per tensor
every few hundred steps costs a few milliseconds and names the tensor and the ranks.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..errors import TrainingFailed


def tensor_checksums(named: dict) -> list[int]:
    """CRC-32 of each tensor's bytes, in the order of ``named``."""
    return [zlib.crc32(np.ascontiguousarray(t).view(np.uint8)) for t in named.values()]


def first_disagreement(names: list, sums_by_rank: list) -> tuple[str, list] | None:
    """(first tensor whose checksum differs from rank 0's, ranks that differ), or None."""
    reference = sums_by_rank[0]
    for i, name in enumerate(names):
        odd = [r for r, sums in enumerate(sums_by_rank) if sums[i] != reference[i]]
        if odd:
            return name, odd
    return None


def check_replicas(comm, model, host_params: np.ndarray, step: int):
    """Collective: raise TrainingFailed on every rank if any rank's parameters differ."""
    named = model.named(host_params)
    sums = comm.allgather(tensor_checksums(named), what="parameter checksums")
    found = first_disagreement(list(named), sums)
    if found is None:
        return
    name, ranks = found
    hosts = comm.allgather(comm.host, what="host names")
    where = ", ".join(f"rank {r} on {hosts[r]}" for r in ranks)
    raise TrainingFailed(f"ranks disagree after step {step}: parameter tensor {name} differs "
                         f"from rank 0's on {where}. Their models have diverged; the run "
                         f"cannot be trusted past the last checkpoint.")


def step_summary(xp, grads, control, stats=None):
    """[|grads|^2, *control, *stats] as one small array, so one device read serves all
    three (``stats``: a step's statistics still on the device, if any). The norm is NaN
    or Inf if any element is (or if the squares overflow; ``all_finite`` then decides)."""
    with np.errstate(over="ignore", invalid="ignore"):
        norm = xp.dot(grads, grads).reshape(1)
    return xp.concatenate((norm, control) + (() if stats is None else (stats,)))


def all_finite(xp, grads) -> bool:
    return bool(xp.isfinite(grads).all())
