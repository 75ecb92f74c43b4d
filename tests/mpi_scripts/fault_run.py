"""Run under mpiexec by tests/test_faults_mpi.py: training with one injected fault.

    fault_run.py FAULT RANK STEP -- TRAIN FLAGS...

FAULT is what rank RANK does when it computes its gradient for (1-based) step STEP:
``sleep`` (hangs for a minute, for the stall watchdog), ``nan`` (a NaN in its
gradient, with ``--nonfinite skip`` the step is dropped), ``drift`` (nudges one of its parameters, so the replicas differ) or
``kill`` (SIGKILL to itself, as the OOM killer would). The fault is injected by
wrapping ``Model.loss_grad`` in this script; the engine has no test hooks.
"""
import os
import signal
import sys
import time

from mpi_dml import models
from mpi_dml.cli import main
from mpi_dml.comm import Comm


def inject(fault: str, at_step: int):
    original = models.Model.loss_grad
    calls = {"n": 0}

    def loss_grad(self, params, grads, x, y, k):
        result = original(self, params, grads, x, y, k)
        calls["n"] += 1
        if fault == "nan" and calls["n"] in (at_step, at_step + 1):
            # The engine computes a bad step's gradient again to find the rank it came
            # from, so the NaN is there for that second call too.
            grads[3] = float("nan")
        elif calls["n"] == at_step:
            if fault == "sleep":
                time.sleep(60)
            elif fault == "drift":
                params[-1] += 1e-3
            elif fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        return result

    models.Model.loss_grad = loss_grad


if __name__ == "__main__":
    fault, rank, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    assert sys.argv[4] == "--"
    if Comm.world().rank == rank:
        inject(fault, step)
    sys.exit(main(["train", *sys.argv[5:]]))
