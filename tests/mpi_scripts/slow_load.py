"""Run under mpiexec by tests/test_train_loop_mpi.py: training whose data load is slow.

    slow_load.py SECONDS -- TRAIN FLAGS...

Every rank prints ``loading on rank R`` and then sleeps SECONDS before it reads its
data, as on a slow file system, so a test can signal a rank while the data loads. The
delay wraps ``mpi_dml.engine.engine.load_training`` in this script; the engine has no test hooks.
"""
import sys
import time

from mpi_dml.engine import engine as train
from mpi_dml.cli import main


def slow(seconds: float):
    original = train.load_training

    def load_training(cfg, comm):
        # One write, so that the lines of two ranks cannot interleave.
        sys.stdout.write(f"loading on rank {comm.rank}\n")
        sys.stdout.flush()
        time.sleep(seconds)
        return original(cfg, comm)

    train.load_training = load_training


if __name__ == "__main__":
    seconds = float(sys.argv[1])
    assert sys.argv[2] == "--"
    slow(seconds)
    sys.exit(main(["train", *sys.argv[3:]]))
