"""Feature scaling to zero mean and unit variance, computed across every rank's rows.

The mean and deviation are part of the model (written with it, applied again at
evaluate and predict time), so a model sees features on the scale it was trained on.
"""
from __future__ import annotations

import numpy as np


def standardization(x: np.ndarray, comm) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every feature over all ranks' rows.

    Two passes (mean, then squared deviations) in float64, so large offsets do not
    cancel. Constant features get a scale of 1 instead of a division by zero, and so
    do near-constant ones (``negligible_spread``).
    """
    d = x.shape[1]
    acc = np.zeros(d + 1)
    for part in _parts(x):
        acc[:d] += part.sum(axis=0, dtype=np.float64)
    acc[d] = x.shape[0]
    comm.allreduce_(acc)
    n = max(acc[d], 1.0)
    mean = acc[:d] / n
    sq = np.zeros(d)
    for part in _parts(x):
        sq += ((part - mean) ** 2).sum(axis=0)
    comm.allreduce_(sq)
    var = sq / n
    std = np.sqrt(var)
    std[negligible_spread(var, mean, n)] = 1.0
    return mean, std


def negligible_spread(var: np.ndarray, mean: np.ndarray, n: float) -> np.ndarray:
    """Columns whose variance is no bigger than the rounding error of computing it.

    A column of 0.1 that went through arithmetic or a text round trip is 0.1 give or
    take an ulp: its deviation is about 1e-17, and dividing by it turns a new value of
    0.2 into 1e15. Summing n values in float64 is exact only to about n * eps
    relative, so a variance within that of zero (scikit-learn's StandardScaler uses
    the same bound) means the column is constant and is left unscaled.
    """
    eps = np.finfo(np.float64).eps
    return var <= n * eps * var + (n * eps * mean) ** 2



# Rows standardized at a time: the float64 temporaries stay small next to the rows.
_PART_ROWS = 1 << 13


def _parts(x):
    for a in range(0, x.shape[0], _PART_ROWS):
        yield x[a:a + _PART_ROWS]


def scaled(x, dtype, standardize, *, xp=np, in_place=False):
    """Features as the model takes them: standardized (in float64), then cast, on the
    host; then moved to ``xp``'s device (no copy for numpy).

    ``in_place``: ``x`` may be overwritten, so rows already in ``dtype`` are scaled
    where they lie and a rank never holds them twice.
    """
    x = np.asarray(x)
    dtype = np.dtype(dtype)
    if standardize is None:
        return xp.asarray(np.ascontiguousarray(x, dtype=dtype))
    reuse = in_place and x.dtype == dtype and x.flags.c_contiguous and x.flags.writeable
    out = x if reuse else np.empty(x.shape, dtype=dtype)
    mean, std = standardize
    for a in range(0, x.shape[0], _PART_ROWS):
        out[a:a + _PART_ROWS] = (x[a:a + _PART_ROWS] - mean) / std
    return xp.asarray(out)

