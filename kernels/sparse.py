"""Products of CSR rows with dense matrices, and the lazy SGD update of the rows a
batch touches: the kernels behind training on sparse data.

    >>> from mpi_dml.kernels import sparse
    >>> z = sparse.matmul(x, w)                  # X @ W, rows x out, dense
    >>> g = sparse.t_matmul(x, d, n_features)    # X.T @ D, every feature's row
    >>> keys = sparse.touched(x)                 # the features x uses, sorted
    >>> pos = sparse.positions(keys, x.indices)  # x's columns renumbered among them
    >>> g = sparse.t_matmul(x, d, len(keys), columns=pos)   # only those rows

``x`` is a ``scipy.sparse.csr_matrix`` (int32 or int64 indices, float32 or float64
data) and the dense operands are C-contiguous NumPy arrays; time and memory grow with
the nonzeros and the touched rows, never with rows x features. A CSR matrix of another
library (``cupyx.scipy.sparse`` on a GPU) goes through its own products (cuSPARSE).

The product kernels run over rows (``matmul``) or over output rows (``t_matmul``) with
``prange`` when the rank has several threads. Every output value is summed in one fixed
order whatever the thread count (row by row, in row order), so a result never depends
on how many threads made it. The lazy update is serial, as the dense update kernels
are: it touches a few thousand rows, less than starting a thread pool costs. SciPy's
own sparse products are the reference the tests hold these to
(``tests/test_sparse_kernels.py``).
"""
from __future__ import annotations

import numba
import numpy as np
import scipy.sparse


def is_host_csr(x) -> bool:
    """Whether ``x`` is SciPy's CSR (the Numba kernels); else it is some other
    library's sparse matrix, which multiplies on its own."""
    return scipy.sparse.issparse(x) and x.format == "csr"


def _as_csr(x):
    """SciPy rows in another sparse format (CSC, COO) as CSR, with int32 indices where
    they fit (as the readers give them), so the kernels compile for one index type in
    practice; anything else as given."""
    if not scipy.sparse.issparse(x):
        return x
    if x.format != "csr":
        x = x.tocsr()
    if x.indices.dtype != np.int32 and max(x.nnz, x.shape[1]) < 2**31:
        x = scipy.sparse.csr_matrix((x.data, x.indices.astype(np.int32),
                                     x.indptr.astype(np.int32)), shape=x.shape, copy=False)
    return x


# --- X @ W ----------------------------------------------------------------------------

@numba.njit(inline="always")
def _row_product(indptr, indices, data, w, out, i):
    # One output at a time, summed in a local: a store per nonzero into ``out`` (which
    # the compiler cannot keep in a register, as it might alias ``w``) costs 3-4x.
    for j in range(out.shape[1]):
        acc = out.dtype.type(0)
        for p in range(indptr[i], indptr[i + 1]):
            acc += data[p] * w[indices[p], j]
        out[i, j] = acc


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _csr_matmul(indptr, indices, data, w, out):
    for i in numba.prange(out.shape[0]):
        _row_product(indptr, indices, data, w, out, i)


@numba.njit(cache=True, error_model="numpy")
def _csr_matmul_serial(indptr, indices, data, w, out):
    for i in range(out.shape[0]):
        _row_product(indptr, indices, data, w, out, i)


# Nonzeros below which one thread does a product: a parallel region costs tens of
# microseconds to start and more when the cores are shared, a nonzero a few nanoseconds.
PARALLEL_NNZ = 1 << 15


def _threaded(nnz: int) -> bool:
    return nnz >= PARALLEL_NNZ and numba.get_num_threads() > 1


def matmul(x, w, out=None):
    """``X @ W`` as a dense (rows, out) array of ``w``'s dtype."""
    x = _as_csr(x)
    if not is_host_csr(x):
        return x @ w
    if out is None:
        out = np.empty((x.shape[0], w.shape[1]), dtype=w.dtype)
    kernel = _csr_matmul if _threaded(x.nnz) else _csr_matmul_serial
    kernel(x.indptr, x.indices, x.data, w, out)
    return out


# --- X.T @ D --------------------------------------------------------------------------

@numba.njit(cache=True)
def _by_column(indptr, indices, n_cols):
    """The batch's nonzeros grouped by column (a counting sort): ``starts`` per column
    and, for each, (row, position in ``data``) in increasing row order."""
    n = indptr.shape[0] - 1
    nnz = indptr[n]
    starts = np.zeros(n_cols + 1, dtype=np.int64)
    for p in range(nnz):
        starts[indices[p] + 1] += 1
    for c in range(n_cols):
        starts[c + 1] += starts[c]
    fill = starts[:-1].copy()
    rows = np.empty(nnz, dtype=np.int64)
    where = np.empty(nnz, dtype=np.int64)
    for i in range(n):  # rows in order: each column's entries come out in row order
        for p in range(indptr[i], indptr[i + 1]):
            c = indices[p]
            q = fill[c]
            rows[q] = i
            where[q] = p
            fill[c] = q + 1
    return starts, rows, where


@numba.njit(inline="always")
def _column_product(starts, rows, where, data, d, out, c):
    for j in range(out.shape[1]):
        acc = out.dtype.type(0)
        for q in range(starts[c], starts[c + 1]):
            acc += data[where[q]] * d[rows[q], j]
        out[c, j] = acc


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _csc_times(starts, rows, where, data, d, out):
    for c in numba.prange(out.shape[0]):
        _column_product(starts, rows, where, data, d, out, c)


@numba.njit(cache=True, error_model="numpy")
def _scatter_times(indptr, columns, data, d, out):
    """X.T @ D on one thread: each nonzero adds into its column's row, the rows taken
    in order, so every sum runs in row order as in the threaded kernel (same bits)."""
    out[...] = 0
    for i in range(indptr.shape[0] - 1):
        for p in range(indptr[i], indptr[i + 1]):
            c = columns[p]
            v = data[p]
            for j in range(out.shape[1]):
                out[c, j] += v * d[i, j]


def t_matmul(x, d, n_cols, *, columns=None, out=None):
    """``X.T @ D`` as a dense (n_cols, out) array of ``d``'s dtype.

    With ``columns`` (an index array as long as ``x.indices``) entry ``p`` counts in
    output row ``columns[p]`` instead of ``x.indices[p]``: the compact form, where
    ``n_cols`` is the number of touched features and ``columns`` their positions
    (``touched``). Each output row is the sum over the batch's rows in row order.
    """
    x = _as_csr(x)
    indices = x.indices if columns is None else columns
    if not is_host_csr(x):
        remapped = type(x)((x.data, indices, x.indptr), shape=(x.shape[0], n_cols))
        return remapped.T @ d
    if out is None:
        out = np.empty((n_cols, d.shape[1]), dtype=d.dtype)
    if columns is None and n_cols > indices.shape[0]:
        # Every feature's row, most of them zero: the touched rows compactly, then
        # spread out, so the grouping by column costs the nonzeros, not the features.
        keys = touched(x)
        out.fill(0)
        out[keys] = t_matmul(x, d, len(keys), columns=positions(keys, indices, np, n_cols))
        return out
    if not _threaded(x.nnz):
        _scatter_times(x.indptr, indices, x.data, d, out)
        return out
    starts, rows, where = _by_column(x.indptr, indices, n_cols)
    _csc_times(starts, rows, where, x.data, d, out)
    return out


def touched(x, xp=np):
    """The sorted distinct columns ``x`` uses: the first-layer rows a batch touches."""
    x = _as_csr(x)
    return sorted_unique(x.indices, xp, n_cols=x.shape[1])


@numba.njit(cache=True)
def _first_seen(values, stamp, mark, out):
    m = 0
    for p in range(values.shape[0]):
        c = values[p]
        if stamp[c] != mark:
            stamp[c] = mark
            out[m] = c
            m += 1
    return m


# Per feature, the last call of ``sorted_unique`` that saw it: a distinct value is one
# whose stamp is not the current call's, so the table is never cleared.
_STAMP = {"table": np.zeros(0, dtype=np.int32), "mark": 0}


def sorted_unique(a, xp=np, n_cols=None):
    """``a``'s distinct values, sorted. With ``n_cols`` (host values, all below it) the
    distinct values are found through a table of stamps, in one pass over ``a``, and
    only they are sorted: a batch's 160k nonzeros touch some 20k features. Otherwise
    one sort and a compare."""
    a = a.reshape(-1)
    if n_cols is not None and xp is np:
        if _STAMP["table"].shape[0] < n_cols or _STAMP["mark"] == np.iinfo(np.int32).max:
            _STAMP["table"] = np.zeros(max(n_cols, _STAMP["table"].shape[0]), dtype=np.int32)
            _STAMP["mark"] = 0
        _STAMP["mark"] += 1
        out = np.empty(a.shape[0], dtype=np.int64)
        found = out[:_first_seen(a, _STAMP["table"], _STAMP["mark"], out)]
        found.sort()
        return found
    s = xp.sort(a)
    if s.shape[0] < 2:
        return s
    keep = xp.empty(s.shape[0], dtype=bool)
    keep[0] = True
    xp.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


@numba.njit(cache=True)
def _positions(keys, indices, table, out):
    for q in range(keys.shape[0]):
        table[keys[q]] = q
    for p in range(indices.shape[0]):
        out[p] = table[indices[p]]


# Feature -> position scratch for ``positions``, grown to the widest rows seen. Only the
# entries of the current keys are written before they are read, so it is never cleared.
_TABLE = [np.empty(0, dtype=np.int64)]


def positions(keys, indices, xp=np, n_cols=None):
    """Where each of ``indices`` (all present in ``keys``, sorted) sits in ``keys``.
    With ``n_cols`` (host arrays, every index below it) through a lookup table: the
    cost of the nonzeros, where a binary search per nonzero costs about ten times more."""
    if n_cols is None or xp is not np:
        return xp.searchsorted(keys, indices)
    if _TABLE[0].shape[0] < n_cols:
        _TABLE[0] = np.empty(n_cols, dtype=np.int64)
    out = np.empty(indices.shape[0], dtype=np.int64)
    _positions(keys, indices, _TABLE[0], out)
    return out


# --- the lazy SGD update of touched rows ------------------------------------------------

@numba.njit(cache=True, error_model="numpy")
def _lazy_sgd_rows(w, rows, g, last, hist_a, hist_s, now, lr, wd, shrink, scale):
    """Rows ``rows`` of ``w``: first the steps they missed since ``last[r]`` (weight
    decay and L1 alone, in closed form from the history), then step ``now`` with their
    gradient ``g`` (one row per entry of ``rows``), as the dense SGD kernel does it."""
    k = w.shape[1]
    zero = w.dtype.type(0)
    a_now = hist_a[now - 1]
    s_now = hist_s[now - 1]
    for q in range(rows.shape[0]):
        r = rows[q]
        was = last[r]
        ratio = a_now / hist_a[was]
        off = a_now * (s_now - hist_s[was])
        for j in range(k):
            p = w[r, j]
            if was != now - 1:
                u = abs(np.float64(p)) * ratio - off
                p = w.dtype.type(np.copysign(u if u > 0 else 0.0, p))
            gg = g[q, j] * scale + wd * p
            p = p - lr * gg
            w[r, j] = np.copysign(np.maximum(abs(p) - shrink, zero), p)
        last[r] = now


@numba.njit(inline="always")
def _catch_up_row(w, r, last, hist_a, hist_s, now):
    """Row ``r`` of ``w`` brought to clock ``now`` (decay and L1 of the steps it missed)."""
    was = last[r]
    if was == now:
        return
    ratio = hist_a[now] / hist_a[was]
    off = hist_a[now] * (hist_s[now] - hist_s[was])
    for j in range(w.shape[1]):
        p = w[r, j]
        u = abs(np.float64(p)) * ratio - off
        w[r, j] = w.dtype.type(np.copysign(u if u > 0 else 0.0, p))
    last[r] = now


@numba.njit(cache=True, error_model="numpy")
def _lazy_catch_up(w, last, hist_a, hist_s, now):
    for r in range(w.shape[0]):
        _catch_up_row(w, r, last, hist_a, hist_s, now)


@numba.njit(cache=True, error_model="numpy")
def _lazy_catch_up_rows(w, rows, last, hist_a, hist_s, now):
    for q in range(rows.shape[0]):
        _catch_up_row(w, rows[q], last, hist_a, hist_s, now)


def lazy_sgd_rows(w, rows, g, last, hist_a, hist_s, now, lr, weight_decay, l1, grad_scale):
    """Plain SGD (no momentum) on the rows ``rows`` of the weight matrix ``w`` with their
    gradient ``g * grad_scale``, after the decay and L1 steps they missed. ``last[r]``
    is the clock row ``r`` is current at (index into ``hist_*``); the step moves
    touched rows from clock ``now - 1`` to ``now``. ``hist_a[t]`` is the product of
    ``1 - lr_s * weight_decay`` and ``hist_s[t]`` the sum of ``lr_s * l1 / hist_a[s]``
    over the steps ``s <= t`` since the history began, so missing steps ``s+1..t``
    take ``|p| -> max(|p| * a_t / a_s - a_t * (s_t - s_s), 0)``: a decay then a soft
    threshold compose into one of each. Arguments are cast as ``cpu.sgd_update`` casts
    them, so a touched row gets the same arithmetic as the dense update."""
    dt = w.dtype.type
    _lazy_sgd_rows(w, rows, g, last, hist_a, hist_s, now, dt(lr), dt(weight_decay),
                   dt(lr * l1), dt(grad_scale))


def lazy_catch_up(w, last, hist_a, hist_s, now, rows=None):
    """Rows ``rows`` of ``w`` (every row: None) brought to clock ``now`` (see
    ``lazy_sgd_rows``): before a forward pass reads them, or the state is read."""
    if rows is None:
        _lazy_catch_up(w, last, hist_a, hist_s, now)
    else:
        _lazy_catch_up_rows(w, rows, last, hist_a, hist_s, now)


def warm_up(dtype, index_dtype=np.int32):
    """Compile every kernel above for ``dtype`` rows with ``index_dtype`` indices now
    (or load it from Numba's cache), so the first step is not the one that pays."""
    dtype = np.dtype(dtype)
    x = scipy.sparse.csr_matrix((np.ones(3, dtype=dtype), np.array([0, 2, 1], dtype=index_dtype),
                                 np.array([0, 2, 3], dtype=index_dtype)), shape=(2, 8))
    w = np.ones((8, 2), dtype=dtype)
    matmul(x, w)
    keys = touched(x)
    t_matmul(x, w[:2], len(keys), columns=positions(keys, x.indices, np, 8))
    t_matmul(x, w[:2], 8)
    last = np.zeros(8, dtype=np.int32)
    hist = np.ones(4)
    lazy_sgd_rows(w, keys.astype(np.int64), w[:len(keys)].copy(), last, hist, hist * 0, 1,
                  0.1, 0.0, 0.0, 1.0)
    lazy_catch_up(w, last, hist, hist * 0, 1, keys.astype(np.int64))
    lazy_catch_up(w, last, hist, hist * 0, 1)
