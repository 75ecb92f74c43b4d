"""Feature scaling to zero mean and unit variance, computed across every rank's rows.

The mean and deviation are part of the model (written with it, applied again at
evaluate and predict time), so a model sees features on the scale it was trained on.

Sparse rows (a SciPy CSR matrix) are scaled without centring: subtracting a mean
would turn every implicit zero into a stored value and make the rows dense. Their
"mean" is recorded as zeros and each feature is divided by its standard deviation
over all rows, implicit zeros included (scikit-learn's ``StandardScaler(with_mean=False)``).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError


def standardization(x: np.ndarray, comm) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every feature over all ranks' rows.

    Two passes (mean, then squared deviations) in float64, so large offsets do not
    cancel. Constant features get a scale of 1 instead of a division by zero, and so
    do near-constant ones (``negligible_spread``).
    """
    if not isinstance(x, np.ndarray):
        return _sparse_standardization(x, comm)
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


def _sparse_standardization(x, comm):
    """Zeros and the standard deviation of every column of CSR ``x`` over all ranks'
    rows, implicit zeros included; the same two passes as for dense rows."""
    d = x.shape[1]
    data, cols = np.asarray(x.data, dtype=np.float64), x.indices
    acc = np.zeros(d + 1)
    acc[:d] = np.bincount(cols, weights=data, minlength=d)
    acc[d] = x.shape[0]
    comm.allreduce_(acc)
    n = max(acc[d], 1.0)
    mean = acc[:d] / n
    # Stored values' squared deviations, then the implicit zeros' (mean^2 each).
    sq = np.bincount(cols, weights=(data - mean[cols]) ** 2, minlength=d)
    stored = np.bincount(cols, minlength=d).astype(np.float64)
    both = np.concatenate([sq, stored])
    comm.allreduce_(both)
    sq, stored = both[:d], both[d:]
    var = (sq + (n - stored) * mean ** 2) / n
    std = np.sqrt(var)
    std[negligible_spread(var, mean, n)] = 1.0
    return np.zeros(d), std


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
    dtype = np.dtype(dtype)
    if not isinstance(x, np.ndarray) and hasattr(x, "indptr"):
        return _scaled_csr(x, dtype, standardize, in_place)
    x = np.asarray(x)
    if standardize is None:
        return xp.asarray(np.ascontiguousarray(x, dtype=dtype))
    reuse = in_place and x.dtype == dtype and x.flags.c_contiguous and x.flags.writeable
    out = x if reuse else np.empty(x.shape, dtype=dtype)
    mean, std = standardize
    for a in range(0, x.shape[0], _PART_ROWS):
        out[a:a + _PART_ROWS] = (x[a:a + _PART_ROWS] - mean) / std
    return xp.asarray(out)



def _scaled_csr(x, dtype, standardize, in_place):
    """CSR rows divided by the deviations (the mean of sparse rows is zero), in
    float64, then cast; the index arrays are shared, never copied."""
    import scipy.sparse as sp

    if standardize is None and x.dtype == dtype:
        return x
    if standardize is None:
        data = x.data.astype(dtype)
    elif np.any(standardize[0] != 0):
        raise UserError("this model was trained with --standardize on dense rows and "
                        "centres its features, which would make sparse rows dense; give it "
                        "dense rows, or train it on sparse rows")
    else:
        data = x.data if in_place and x.data.dtype == dtype else np.empty(x.nnz, dtype=dtype)
        std = standardize[1]
        for a in range(0, x.nnz, _PART_ROWS * 64):
            b = min(a + _PART_ROWS * 64, x.nnz)
            data[a:b] = x.data[a:b] / std[x.indices[a:b]]
    return sp.csr_matrix((data, x.indices, x.indptr), shape=x.shape, copy=False)
