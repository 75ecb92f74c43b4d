"""The only module that imports CuPy.

Everything else asks this module whether a GPU can be used and, later, for the array
module (``xp``) to compute with.
"""
from __future__ import annotations


def cupy_status() -> dict:
    """Whether CuPy is installed and sees a GPU; never raises."""
    try:
        import cupy
    except Exception as exc:  # not installed, or a broken CUDA install
        return {"cupy": None, "gpu_available": False, "reason": f"cupy not importable: {exc}"}
    try:
        available = bool(cupy.is_available())
        count = cupy.cuda.runtime.getDeviceCount() if available else 0
    except Exception as exc:
        return {"cupy": cupy.__version__, "gpu_available": False, "reason": str(exc)}
    return {"cupy": cupy.__version__, "gpu_available": available, "gpu_count": count,
            **({} if available else {"reason": "cupy sees no usable GPU"})}
