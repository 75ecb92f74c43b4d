"""Metrics over rows spread across ranks: sums on each rank, one reduction, then the
figures, so they are the same for any number of ranks."""
from __future__ import annotations

import numpy as np

from ..data.standardize import scaled
from ..devices.arrays import array_module
from ..models.dense import is_sparse

EVAL_CHUNK = 8192  # rows per forward pass: bounds memory whatever the shard size


def split_metrics(model, params, x, y, kernels, comm, *, standardize=None) -> dict:
    """Loss and accuracy (classifiers) or mse/r2 (regression) over every rank's rows.

    ``x`` and ``y`` are host arrays (``x`` may be CSR rows); ``params`` and ``kernels``
    may be on a GPU, in which case each chunk of rows is copied there. The metrics are
    host floats.
    """
    chunks = ((x[lo:lo + EVAL_CHUNK], y[lo:lo + EVAL_CHUNK])
              for lo in range(0, x.shape[0], EVAL_CHUNK))
    loss, correct = local_sums(model, params, chunks, kernels, standardize=standardize)
    return reduced_metrics(model, loss, correct, y, comm)


def local_sums(model, params, chunks, kernels, *, standardize=None) -> tuple[float, float]:
    """This rank's summed loss and correct count over ``(x, y)`` chunks of rows; local."""
    xp = array_module(params)
    dtype = params.dtype
    loss = correct = 0.0
    for xc, yc in chunks:
        if is_sparse(xc) and standardize is None:
            xb = sparse_rows_on(xc.astype(dtype, copy=False), xp)
        else:
            xb = scaled(xc, dtype, standardize, xp=xp)
        yb = xp.asarray(model.labels(yc, dtype))
        l, c, _ = model.evaluate(params, xb, yb, kernels)
        loss, correct = loss + l, correct + c
    return loss, correct


def sparse_rows_on(x, xp):
    """Host CSR rows where ``xp`` computes: as they are for NumPy, else on the GPU."""
    if xp is np:
        return x
    from ..devices.gpu import csr_on_device
    return csr_on_device(x)


def reduced_metrics(model, loss, correct, y, comm) -> dict:
    """Collective: the metrics from every rank's sums and labels ``y``."""
    loss, correct, n, sum_y = comm.allreduce_(np.array([loss, correct, y.size, y.sum()]))
    if n == 0:
        return {"n": 0}
    if model.is_classifier:
        return {"accuracy": correct / n, "loss": loss / n, "n": int(n)}
    # Total variance in a second pass around the global mean: the one-pass
    # sum(y^2) - sum(y)^2 / n cancels to nothing for targets far from zero.
    total = comm.allreduce_(np.array([((y - sum_y / n) ** 2).sum()]))[0]
    mse = 2.0 * loss / n  # the squared loss is 0.5 * (z - y)^2
    r2 = 1.0 - (mse * n) / total if total > 0 else None
    return {"r2": r2, "mse": mse, "loss": loss / n, "n": int(n)}


def finite_or_null(record: dict) -> dict:
    """NaN and Infinity are not JSON; write them as null."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in record.items()}

