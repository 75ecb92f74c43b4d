"""Run under mpiexec by tests/test_faults_mpi.py and tests/test_train_loop_mpi.py:
training with one injected fault.

    fault_run.py FAULT RANK STEP [--log DIR] -- TRAIN FLAGS...

FAULT is what rank RANK does when it computes its gradient for (1-based) step STEP:
``sleep`` (hangs for a minute, for the stall watchdog), ``nan`` (a NaN in its
gradient, with ``--nonfinite skip`` the step is dropped), ``drift`` (nudges one of its parameters, so the replicas differ),
``kill`` (SIGKILL to itself, as the OOM killer would) or ``sigterm`` (SIGTERM to
itself, as a scheduler's preemption would, at a known point of the computation). The fault is injected by
wrapping ``Model.loss_grad`` in this script; the engine has no test hooks.

With ``--log DIR`` every rank also appends one JSON line per ``loss_grad`` call to
``DIR/rank-R.jsonl``: the call number, the loss and correct rows it returned, its row
count and a digest of its batch, so a test can recompute the epoch's figures itself.
"""
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from mpi_dml import models
from mpi_dml.cli import main
from mpi_dml.parallel.comm import Comm


def inject(fault: str | None, at_step: int, log: Path | None, rank: int):
    original = models.Model.loss_grad
    calls = {"n": 0}

    def loss_grad(self, params, grads, x, y, k, totals=None):
        result = original(self, params, grads, x, y, k, totals=totals)
        calls["n"] += 1
        if log is not None:
            loss, hits = result if totals is None else totals[:2]
            entry = {"call": calls["n"], "loss": float(loss), "hits": float(hits),
                     "rows": int(x.shape[0]),
                     "batch": hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()}
            with open(log / f"rank-{rank}.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        if fault == "nan" and calls["n"] in (at_step, at_step + 1):
            # The engine computes a bad step's gradient again to find the rank it came
            # from, so the NaN is there for that second call too.
            grads[3] = float("nan")
        elif fault is not None and calls["n"] == at_step:
            if fault == "sleep":
                time.sleep(60)
            elif fault == "drift":
                params[-1] += 1e-3
            elif fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
        return result

    models.Model.loss_grad = loss_grad


if __name__ == "__main__":
    fault, rank, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rest = sys.argv[4:]
    log = None
    if rest[0] == "--log":
        log, rest = Path(rest[1]), rest[2:]
        log.mkdir(parents=True, exist_ok=True)
    assert rest[0] == "--"
    me = Comm.world().rank
    if me == rank or log is not None:
        inject(fault if me == rank else None, step, log, me)
    sys.exit(main(["train", *rest[1:]]))
