"""Run by tests/test_library_etiquette.py, as one plain process and under mpiexec: what
importing mpi_dml and using its API change in the process, before and after
``mpi_dml.setup_process()``.

    $ python tests/mpi_scripts/custom_etiquette.py OUT CSV
    $ mpiexec -n 2 python tests/mpi_scripts/custom_etiquette.py OUT CSV
    $ mpiexec -n 2 python tests/mpi_scripts/custom_etiquette.py --raise-on 1

Each rank writes ``OUT.rank<R>.json`` with snapshots of the process-wide state:
environment, ``sys.excepthook`` and ``threading.excepthook``, Python's signal handlers
and the kernel's mask of caught signals (``SigCgt``, which also sees handlers installed
from C), BLAS and Numba thread counts, and NumPy's floating-point error modes. They are
taken after ``import mpi_dml``; after the program's own ``import mpi4py``/``numpy``
(MPI's own initialisation is not mpi_dml's doing); inside and after a fit and a
``read_table``; the same once the program has imported threadpoolctl (to read BLAS
thread counts); and after ``setup_process(threads=1)``, inside and after a fit again.

``--raise-on R``: after ``setup_process()``, rank R raises while the others wait in a
barrier; the job must end at once instead of waiting for ever.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading

import mpi_dml  # first, alone: what it imports is part of the record

AFTER_IMPORT = sorted(m for m in ("mpi4py", "numpy", "sklearn", "numba", "scipy",
                                  "threadpoolctl", "pandas") if m in sys.modules)
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT", "SIGHUP")


def caught_mask() -> str:
    with open("/proc/self/status") as fh:
        return next(line.split()[1] for line in fh if line.startswith("SigCgt"))


def handler_name(h) -> str:
    return {signal.SIG_DFL: "SIG_DFL", signal.SIG_IGN: "SIG_IGN", None: "None"}.get(
        h, getattr(h, "__qualname__", repr(h)))


def snapshot() -> dict:
    state = {
        "environ": dict(os.environ),
        "excepthook": handler_name(sys.excepthook),
        "threading_excepthook": handler_name(threading.excepthook),
        "signals": {s: handler_name(signal.getsignal(getattr(signal, s))) for s in SIGNALS},
        "caught": caught_mask(),
        "modules": sorted(m for m in ("threadpoolctl", "sklearn", "pandas") if m in sys.modules),
    }
    if "numba" in sys.modules:
        import numba
        import numpy as np

        state["numba_threads"] = numba.get_num_threads()
        state["numpy_errors"] = np.geterr()
    # Only once the program imported threadpoolctl, which sets KMP_DUPLICATE_LIB_OK in
    # the environment as it loads.
    if "threadpoolctl" in sys.modules:
        from threadpoolctl import threadpool_info

        state["blas_threads"] = sorted({p["num_threads"] for p in threadpool_info()})
    return state


def fit_and_read(csv: str, rank: int, size: int) -> dict:
    """A small fit and a read_table; returns the snapshot taken inside the fit's last
    call of loss_grad (the first is train's check of the model, before the fit)."""
    import numpy as np

    from mpi_dml.api.custom import CustomModel

    inside = {}

    class Mean(CustomModel):
        size = 1

        def loss_grad(self, params, grad, X, y):
            inside.update(snapshot())
            r = params[0] - y
            grad[0] = r.sum()
            return 0.5 * float(r @ r)

    y = np.arange(40.0)[rank::size]
    result = mpi_dml.train(Mean(), np.ones((y.size, 1)), y, learning_rate_init=0.5,
                           batch_size=8, max_iter=3)
    assert abs(result.params[0] - 19.5) < 1.0, result.params
    rows = mpi_dml.read_table(csv)
    assert rows.n_rows == 5
    return inside


def main(out: str, csv: str) -> int:
    record = {"imported": AFTER_IMPORT, "after_import": snapshot()}
    from mpi4py import MPI  # the program's own MPI: its initialisation is MPI's doing
    import numba  # noqa: F401  (and so are these libraries' defaults)
    import numpy  # noqa: F401

    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    record["before"] = snapshot()
    record["inside"] = fit_and_read(csv, rank, size)
    record["after"] = snapshot()
    import threadpoolctl  # noqa: F401  (to see BLAS threads from here on)
    record["before_blas"] = snapshot()
    record["inside_blas"] = fit_and_read(csv, rank, size)
    record["after_blas"] = snapshot()
    mpi_dml.setup_process(threads=1)
    record["set_up"] = snapshot()
    record["inside_owned"] = fit_and_read(csv, rank, size)
    record["after_owned"] = snapshot()
    with open(f"{out}.rank{rank}.json", "w") as fh:
        json.dump(record, fh)
    return 0


def raise_on(rank_that_raises: int) -> int:
    from mpi4py import MPI

    mpi_dml.setup_process()
    if MPI.COMM_WORLD.Get_rank() == rank_that_raises:
        raise RuntimeError("a bug on one rank")
    MPI.COMM_WORLD.Barrier()  # the others: without the hook, they would wait here
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--raise-on":
        sys.exit(raise_on(int(sys.argv[2])))
    sys.exit(main(sys.argv[1], sys.argv[2]))
