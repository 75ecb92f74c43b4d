"""What the estimators' collective calls agree on: errors, the data's shape, classes, scores.

``fit`` and ``score`` are collective: every rank of the communicator calls them with
its own rows. A check that fails on one rank's rows must not leave the others waiting
in the next collective for ever, so each rank first runs its local checks and all
ranks exchange the outcome in one allgather (``gather_or_raise``): either every rank
goes on, or every rank raises the same error, naming the rank that found it.

    $ mpiexec -n 4 python my_script.py     # a script whose ranks call fit together

    >>> summaries = gather_or_raise(comm, lambda: {"rows": len(X)})   # collective
"""
from __future__ import annotations

import numpy as np


def gather_or_raise(comm, local):
    """Collective: ``local()`` on every rank, and every rank's result in rank order.

    If ``local`` raises on any rank, every rank raises an exception of the same class
    with the lowest failing rank's message; when only some ranks failed, the message
    names that rank. With one rank the exception is the original one, unchanged.
    """
    if comm.size == 1:
        return [local()]
    mine = None
    try:
        report = (None, local())
    except Exception as exc:  # anything: a rank that does not report strands the rest
        mine, report = exc, (_portable(exc), None)
    reports = comm.allgather(report, what="checks")
    failed = [(rank, error) for rank, (error, _) in enumerate(reports) if error is not None]
    if not failed:
        return [summary for _, summary in reports]
    rank, (kind, message) = failed[0]
    if len(failed) < comm.size:
        message = f"{message} (on rank {rank} of {comm.size})"
    raise _rebuilt(kind, message) from mine


def _portable(exc: Exception):
    """(name, message) that another rank raises again as the same class: one of
    ``_PORTABLE``, matched by identity; anything else travels as a ValueError with its
    class's name in the message. Names, not classes, go over the wire."""
    for kind in _portable_classes():
        if type(exc) is kind:
            return kind.__name__, str(exc)
    return "ValueError", f"{type(exc).__name__}: {exc}"


def _rebuilt(name: str, message: str) -> Exception:
    kinds = {kind.__name__: kind for kind in _portable_classes()}
    return kinds.get(name, ValueError)(message)


def _portable_classes() -> tuple:
    """The exceptions a check or a fit raises on purpose."""
    from sklearn.exceptions import NotFittedError

    from ..errors import AgreedError, Preempted, TrainingFailed, UserError
    return (ValueError, TypeError, IndexError, KeyError, NotFittedError, UserError,
            AgreedError, TrainingFailed, Preempted, FileNotFoundError, NotADirectoryError,
            PermissionError, OSError)


def from_root(comm, action):
    """Collective: ``action()`` on rank 0 alone (reading or writing a file), and its
    result on every rank; its error, if any, raised on every rank."""
    error = result = None
    if comm.rank == 0:
        try:
            result = action()
        except Exception as exc:
            if comm.size == 1:
                raise
            error = _portable(exc)
    if comm.size > 1:
        error, result = comm.bcast_obj((error, result), what="rank 0's result")
        if error is not None:
            raise _rebuilt(*error)
    return result


# --- agreeing on the data ---------------------------------------------------------------
def agreed_data(summaries, owner: str) -> dict:
    """The global shape of the rows every rank passed to fit, from each rank's
    summary ({"rows", "features", "dtype", "names"}); the same on every rank.

    Ranks without rows have no say on the dtype or the feature names (an empty
    NumPy array is float64 and nameless whatever the others hold); every rank must
    agree on the number of features.
    """
    n_rows = sum(s["rows"] for s in summaries)
    if n_rows == 0:
        raise ValueError(f"Found 0 samples on every rank; {owner} needs at least 1 "
                         f"(a rank may pass none: an array of shape (0, n_features)).")
    widths = sorted({s["features"] for s in summaries})
    if len(widths) > 1:
        per_rank = ", ".join(f"rank {r}: {s['features']}" for r, s in enumerate(summaries))
        raise ValueError(f"X must have the same number of features on every rank; got "
                         f"{per_rank}.")
    voters = [s for s in summaries if s["rows"]]
    # float32 only when every rank with rows passed float32: a float64 part is not
    # rounded down to fit the others.
    dtype = "float32" if all(s["dtype"] == "float32" for s in voters) else "float64"
    names = {s["names"] for s in voters}
    if len(names) > 1:
        per_rank = "; ".join(f"rank {r}: {_shown_names(s['names'])}"
                             for r, s in enumerate(summaries) if s["rows"])
        raise ValueError(f"X must have the same feature names on every rank (or none on "
                         f"all); got {per_rank}.")
    return {"rows": n_rows, "features": widths[0], "dtype": dtype, "names": names.pop()}


def _shown_names(names):
    if names is None:
        return "no names"
    text = ", ".join(names[:5])
    return text + (", ..." if len(names) > 5 else "")


def union_classes(parts) -> np.ndarray:
    """Sorted union of each rank's sorted class labels (ranks without rows give none)."""
    parts = [p for p in parts if p is not None and len(p)]
    kinds = {"number" if p.dtype.kind in "biuf" else p.dtype.kind for p in parts}
    if len(kinds) > 1:
        raise ValueError(f"y must hold labels of one kind on every rank; got "
                         f"{', '.join(sorted(str(p.dtype) for p in parts))} across ranks.")
    if len(parts) == 1:
        return parts[0]
    return np.unique(np.concatenate(parts))


# --- scores -------------------------------------------------------------------------------
def combine_moments(parts):
    """Weight, weighted mean and weighted sum of squared deviations of all ranks'
    values, from each rank's (weight, mean, squared deviations), combined pairwise in
    rank order (Chan et al.): no cancellation for values far from zero."""
    w, mean, m2 = 0.0, 0.0, 0.0
    for wb, mb, m2b in parts:
        if wb <= 0:
            continue
        total = w + wb
        delta = mb - mean
        mean += delta * wb / total
        m2 += m2b + delta * delta * w * wb / total
        w = total
    return w, mean, m2


def row_weights(sample_weight, n: int) -> np.ndarray:
    """One float64 weight per row (1 without ``sample_weight``). A rank's weights may
    all be 0, or it may have no rows: only the total over every rank must be > 0."""
    if sample_weight is None:
        return np.ones(n)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        return np.full(n, float(w))
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), one weight per row. Got "
                         f"shape {w.shape} instead.")
    if not np.isfinite(w).all():
        raise ValueError("sample_weight must hold finite numbers.")
    return w


def local_moments(values, weights):
    """(weight, weighted mean, weighted sum of squared deviations) of this rank."""
    w = float(weights.sum())
    if w <= 0:
        return 0.0, 0.0, 0.0
    mean = float((weights * values).sum() / w)
    return w, mean, float((weights * (values - mean) ** 2).sum())
