"""Run under mpiexec by tests/test_kernels_threads.py: which threads call the kernels
while the engine trains with its stall watchdog running.

    $ mpiexec -n 2 python tests/mpi_scripts/kernel_callers.py DATA.npy OUT_DIR RESULT.json

The Engine gets the cpu kernels behind a recorder. Every call notes the calling thread,
whether another call was still running (Numba's workqueue threading layer aborts the
process when two threads launch parallel kernels at once) and whether the watchdog
thread was alive. Rank 0 writes every rank's record to RESULT.json.
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from mpi_dml.config import TrainConfig
from mpi_dml.engine import Engine
from mpi_dml.kernels import get
from mpi_dml.parallel.comm import Comm, install_abort_hook


class Recorder:
    """The cpu kernel module, each call recorded (see the module docstring)."""

    def __init__(self, kernels):
        self._k = kernels
        self._lock = threading.Lock()
        self._running = 0
        self.callers, self.overlaps, self.calls, self.watched = set(), 0, 0, 0

    def __getattr__(self, name):
        fn = getattr(self._k, name)

        def recorded(*args):
            with self._lock:
                self.overlaps += self._running > 0
                self._running += 1
                self.calls += 1
                self.callers.add(threading.current_thread().name)
                self.watched += any(t.name == "mpi_dml-watchdog" for t in threading.enumerate())
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._running -= 1
        return recorded


def main():
    data, out, result = sys.argv[1:4]
    install_abort_hook()
    comm = Comm.world()
    cfg = TrainConfig(data=data, label_column="20", out=out, model="mlp", hidden=(32,),
                      optimizer="adam", lr=1e-3, batch_size=256, epochs=2, seed=0,
                      threads=2, progress="none", stall_timeout=600)
    recorder = Recorder(get("cpu"))
    Engine(cfg, comm=comm, kernels=recorder).fit()
    mine = {"calls": recorder.calls, "overlaps": recorder.overlaps, "watched": recorder.watched,
            "callers": sorted(recorder.callers), "main": threading.main_thread().name}
    everyone = comm.allgather(mine, what="kernel callers")
    if comm.is_root:
        Path(result).write_text(json.dumps(everyone))


if __name__ == "__main__":
    main()
