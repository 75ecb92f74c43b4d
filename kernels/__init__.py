"""Compute kernels: the per-layer, per-loss and per-optimiser inner loops.

Every backend is a module that defines the same functions (``NAMES``) with the same
signatures and results:

* ``reference`` - plain NumPy, written to be read; it defines what "correct" means.
* ``cpu``       - Numba ``@njit`` kernels, fused, on the calling thread's Numba threads
                  for large batches; the default.
* ``cuda``      - Numba ``@cuda.jit`` kernels over device arrays (CuPy arrays on a
                  GPU, NumPy arrays under ``NUMBA_ENABLE_CUDASIM=1``).

Sparse rows (CSR) have kernels of their own, for the first layer's products and the
lazy update of the rows a batch touches: ``sparse`` (``from mpi_dml.kernels import
sparse``), on the CPU; a GPU multiplies CuPy's CSR with cuSPARSE.

Backends are imported only when asked for, so importing this package neither loads
Numba nor compiles anything.

    >>> k = get("cpu")
    >>> warm_up("cpu", np.float32)   # compile before timing starts
    >>> k.softmax_xent(logits, labels, bias_grad)
"""
import importlib

import numpy as np

NAMES = (
    "bias_act_forward",
    "act_backward",
    "softmax_xent",
    "logistic_loss_grad",
    "hinge_loss_grad",
    "squared_hinge_loss_grad",
    "squared_loss_grad",
    "sgd_update",
    "adam_update",
)

# Backend name -> module name inside this package.
_BACKENDS = {"reference": "reference", "cpu": "cpu", "cuda": "cuda"}


def get(backend="cpu"):
    """Return the kernel module for ``backend`` ("reference", "cpu" or "cuda")."""
    if backend not in _BACKENDS:
        raise ValueError(
            f"unknown kernel backend {backend!r}; choose one of {', '.join(_BACKENDS)}"
        )
    return importlib.import_module(f".{_BACKENDS[backend]}", __name__)


def warm_up(backend, dtype):
    """Call every kernel once on tiny ``dtype`` arrays so JIT compilation happens now,
    every path that training can take included.

    The argument types match what training passes (C-contiguous arrays, int64
    labels, uint8 decay masks), so the compiled versions are the ones reused later.
    For "cuda" the arrays are put on the device first, as training's are.
    """
    kernels = get(backend)
    dtype = np.dtype(dtype)
    put = _to_device if backend == "cuda" else np.asarray
    n, k = 2, 3

    def mat(cols):
        return put(np.full((n, cols), 0.5, dtype=dtype))

    def vec(length):
        return put(np.zeros(length, dtype=dtype))

    for activation in ("identity", "relu", "tanh"):
        out = mat(k)
        kernels.bias_act_forward(out, vec(k), activation)
        kernels.act_backward(mat(k), out, activation, vec(k))
    # Few classes and many: cuda.py's softmax has a kernel for each (a thread per row up
    # to 32 classes, a block per row above), and each compiles on its first launch.
    # Each loss returns its sums, or keeps them on the device in ``totals`` (training).
    targets = put(np.array([0.0, 1.0], dtype=dtype))
    for totals in ((), (put(np.zeros(3, dtype=np.float64)),)):
        for classes in (k, 40):
            kernels.softmax_xent(mat(classes), put(np.zeros(n, dtype=np.int64)), vec(classes),
                                 *totals)
        kernels.logistic_loss_grad(mat(1), targets, vec(1), *totals)
        kernels.hinge_loss_grad(mat(1), targets, vec(1), *totals)
        kernels.squared_hinge_loss_grad(mat(1), targets, vec(1), *totals)
        kernels.squared_loss_grad(mat(k), mat(k), vec(k), *totals)

    mask = put(np.ones(k, dtype=np.uint8))
    for momentum, nesterov in ((0.0, False), (0.9, True)):
        kernels.sgd_update(vec(k), vec(k), vec(k), 0.1, momentum, nesterov, 0.0, 0.0, mask,
                           0.5)
    for decoupled in (False, True):
        kernels.adam_update(vec(k), vec(k), vec(k), vec(k), 1e-3, 0.9, 0.999, 1e-8, 1,
                            0.0, decoupled, 0.0, mask, 0.5)


def _to_device(array):
    """A Numba device copy of ``array``: the same kernel argument types as CuPy's."""
    from numba import cuda

    return cuda.to_device(array)
