"""Which array module an array belongs to, without importing CuPy.

Code that runs on NumPy and CuPy arrays alike asks the array for its module, so one
function serves the CPU and the GPU; only ``gpu`` imports CuPy.
"""
from __future__ import annotations

import sys

import numpy as np


def array_module(a):
    """``cupy`` for a CuPy array, else ``numpy``; never imports CuPy itself."""
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy
    return np

