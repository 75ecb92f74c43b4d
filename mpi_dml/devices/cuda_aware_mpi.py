"""Whether the MPI library takes GPU (CUDA) memory, asked of the library itself.

Handing GPU memory to an MPI that is not CUDA-aware kills the process with SIGSEGV, so
``gpu_exchange`` only picks the CUDA-aware exchange when the library says yes. The
question goes through ctypes to the libmpi already loaded in this process (or, for
Cray MPICH, its documented switch); it never touches GPU memory. mpi4py stays in
``comm``: the one fact needed from it, the library's version text, is passed in.

    >>> said, how = mpi_cuda_support(comm.mpi_library_version())
"""
from __future__ import annotations

import ctypes
import os

_MPIX_GPU_SUPPORT_CUDA = 0  # MPICH's mpi.h
# Libraries whose names start with "libmpi" but are not the MPI library itself.
_NOT_LIBMPI = ("libmpi_gtl", "libmpi_cxx", "libmpicxx", "libmpifort", "libmpi_mpifh",
               "libmpi_usempi", "libmpi_java")


def mpi_cuda_support(library_version: str) -> tuple[bool | None, str]:
    """Whether this MPI library accepts GPU (CUDA) memory in its calls, in its own words:
    (True or False, how it said so), or (None, why it cannot say). Local; never touches
    GPU memory, so it is safe with any MPI.

    Cray MPICH takes GPU memory when MPICH_GPU_SUPPORT_ENABLED=1 (its documented
    switch). Otherwise the libmpi already loaded in this process is asked through
    ctypes: ``MPIX_Query_cuda_support()`` (Open MPI, MVAPICH2, MPICH >= 4.1; it counts
    run-time settings such as MPICH's MPIR_CVAR_ENABLE_GPU), then MPICH's
    ``MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, &flag)``.

    ``library_version`` is the library's version text (``comm.mpi_library_version()``).
    """
    version = library_version.strip()
    name = " ".join(version.splitlines()[0].split()) if version else "this MPI library"
    if "CRAY MPICH" in version.upper():
        on = os.environ.get("MPICH_GPU_SUPPORT_ENABLED", "").strip() == "1"
        return on, f"{name} with MPICH_GPU_SUPPORT_ENABLED {'=1' if on else 'not set to 1'}"
    for lib in _loaded_libmpi():
        answer = _ask_library(lib, name)
        if answer is not None:
            return answer
    if os.environ.get("MPIR_CVAR_ENABLE_GPU", "").strip().lower() in ("0", "no", "false"):
        return False, f"{name} with MPIR_CVAR_ENABLE_GPU={os.environ['MPIR_CVAR_ENABLE_GPU']}"
    return None, (f"{name} cannot say whether it takes GPU memory (it has no "
                  f"MPIX_Query_cuda_support)")


def _ask_library(lib, name):
    query = getattr(lib, "MPIX_Query_cuda_support", None)
    if query is not None:
        query.restype, query.argtypes = ctypes.c_int, []
        value = query()
        said = {1: True, 0: False}.get(value)
        return said, f"{name}: MPIX_Query_cuda_support() returned {value}"
    query = getattr(lib, "MPIX_GPU_query_support", None)
    if query is not None:
        flag = ctypes.c_int(0)
        query.restype = ctypes.c_int
        query.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        if query(_MPIX_GPU_SUPPORT_CUDA, ctypes.byref(flag)) == 0:
            return flag.value == 1, f"{name}: MPIX_GPU_query_support(CUDA) gave {flag.value}"
    return None


def libmpi_paths(maps: str) -> list[str]:
    """Paths of the MPI libraries in a /proc/<pid>/maps text, in order, once each."""
    found = []
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)  # address perms offset dev inode [path]
        path = parts[5] if len(parts) == 6 else ""
        base = os.path.basename(path)
        if (base.startswith("libmpi") and ".so" in base and not base.startswith(_NOT_LIBMPI)
                and path not in found):
            found.append(path)
    return found


def _loaded_libmpi() -> list:
    """ctypes handles of the MPI libraries this process has loaded (never loads one)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = libmpi_paths(fh.read())
    except OSError:
        paths = []
    handles = []
    for path in paths:
        try:
            handles.append(ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LAZY))
        except OSError:
            pass
    # No /proc (macOS) or an MPI linked into the executable: the global namespace.
    return handles or [ctypes.CDLL(None)]
