"""Check ``kernels.cuda.squared_hinge_loss_grad`` against ``kernels.reference``; print JSON.

    $ NUMBA_ENABLE_CUDASIM=1 python tests/cuda_scripts/compare_squared_hinge.py
    $ python tests/cuda_scripts/compare_squared_hinge.py --gpu      # CuPy arrays, real GPU

The cases of ``compare_kernels.py`` for a binary loss (random rows, and the sums kept
in ``totals``), at its sizes, plus rows exactly on the margin, a NaN output and an empty
batch. Output as ``compare_kernels.py``'s: ``{"results": {case: {"error": ...}}}`` or
``{"skipped": reason}``. Importing this file defines the case names without loading
Numba.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, as pytest has it
from cuda_scripts.compare_kernels import (DTYPES, SIZES, Arrays, binary_case,  # noqa: E402
                                          gpu_arrays, totals_case)

from mpi_dml import kernels  # noqa: E402

NAME = "squared_hinge_loss_grad"


def margin_case(mem, sizes, dtype):
    """Rows on the margin (t z == 1: no loss, gradient 0), inside it, past it, a NaN
    output (NaN loss and gradient, as the reference), and an empty batch; the gradient
    is the reference's to the bit (t is +-1, so -2 t slack is exact)."""
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    z = np.array([[1.0], [-1.0], [0.5], [-0.25], [2.0], [-3.0], [0.0]], dtype)
    y = np.array([1, 0, 1, 0, 0, 0, 1], dtype)
    z_dev, z_ref = mem.pair(z)
    bg_dev, bg_ref = mem.pair(np.full(1, 7.0, dtype))
    got = cuda.squared_hinge_loss_grad(z_dev, mem.put(y), bg_dev)
    expected = ref.squared_hinge_loss_grad(z_ref, y, bg_ref)
    assert got[1] == expected[1] == 5, (got, expected)
    # 0.5^2 + 0.75^2 + 3^2 + 1^2, every term exact in float32
    assert got[0] == expected[0] == 10.8125, (got, expected)
    np.testing.assert_array_equal(mem.get(z_dev), z_ref)
    np.testing.assert_array_equal(mem.get(z_dev)[:, 0], [0, 0, -1, 1.5, 6, 0, -2])
    assert mem.get(bg_dev)[0] == bg_ref[0] == 4.5, (mem.get(bg_dev), bg_ref)

    z_dev = mem.put(np.array([[np.nan], [0.5]], dtype))
    loss, _ = cuda.squared_hinge_loss_grad(z_dev, mem.put(np.array([1, 1], dtype)),
                                           mem.put(np.empty(1, dtype)))
    assert np.isnan(loss) and np.isnan(mem.get(z_dev)[0, 0]), (loss, mem.get(z_dev))

    bias_grad = mem.put(np.full(1, 7.0, dtype))
    got = cuda.squared_hinge_loss_grad(mem.put(np.empty((0, 1), dtype)),
                                       mem.put(np.empty(0, dtype)), bias_grad)
    assert got == (0.0, 0), got
    assert not mem.get(bias_grad).any(), mem.get(bias_grad)


def cases(mode):
    """{case name: function(mem)} for ``mode`` "sim" or "gpu"."""
    sizes = SIZES[mode]
    out = {}
    for dtype in DTYPES:
        out[f"{NAME}[{dtype}]"] = lambda mem, d=dtype: binary_case(mem, sizes, d, NAME)
        out[f"{NAME}_totals[{dtype}]"] = lambda mem, d=dtype: totals_case(mem, sizes, d, NAME)
        out[f"{NAME}_margin[{dtype}]"] = lambda mem, d=dtype: margin_case(mem, sizes, d)
    return out


def case_names(mode):
    return list(cases(mode))


def main(argv):
    mode = "gpu" if "--gpu" in argv else "sim"
    if mode == "sim":
        if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
            sys.exit("set NUMBA_ENABLE_CUDASIM=1 (or pass --gpu)")
        mem = Arrays()
    else:
        mem, reason = gpu_arrays()
        if mem is None:
            print(json.dumps({"skipped": reason}))
            return
    results = {}
    for name, run in cases(mode).items():
        start = time.perf_counter()
        try:
            run(mem)
            error = None
        except Exception as exc:  # reported per case; the test names the failing one
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
        results[name] = {"error": error, "seconds": round(time.perf_counter() - start, 3)}
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main(sys.argv[1:])
