"""Run under mpiexec by tests/test_sources.py: partitioned reads on real ranks.

    sources_check.py check DIR...     every data file in each DIR, against DIR/truth.npy
    sources_check.py fail PATH        open PATH and read a partition; expect a UserError

``check`` aborts the job (exit 1) on the first mismatch. ``fail`` prints the agreed
error once, on rank 0, and every rank exits 2; any rank finishing cleanly exits 1.
"""
import sys
from pathlib import Path

import numpy as np

from mpi_dml.data import formats as sources
from mpi_dml.data.formats import csv_table
from mpi_dml.parallel.comm import Comm, install_abort_hook
from mpi_dml.errors import EXIT_USER_ERROR, AgreedError


TINY = {"_INDEX_STRIDE": 3, "_PARSE_BLOCK": 16, "_SCAN_BLOCK": 7}


def chunk(n, rank, size):
    """Rows of ``rank`` when n rows are split in rank order; the first n % size get one more."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def layouts(n, size):
    """Named row assignments, one (lo, hi) per rank, each of them legal for read()."""
    last = size - 1
    yield "partition", [chunk(n, r, size) for r in range(size)]
    yield "all on last rank", [(0, n) if r == last else (0, 0) for r in range(size)]
    yield "all on first rank", [(0, n) if r == 0 else (n, n) for r in range(size)]
    yield "reversed order", [chunk(n, last - r, size) for r in range(size)]
    yield "overlapping", [(min(r, n), n) for r in range(size)]
    yield "everyone empty", [(0, 0)] * size


def fail(comm, message):
    print(f"rank {comm.rank}: MISMATCH {message}", file=sys.stderr, flush=True)
    comm.abort(1)


def check_file(comm, path, truth):
    table = sources.open_table(path, comm)
    if table.n_rows != truth.shape[0] or len(table.columns) != truth.shape[1]:
        fail(comm, f"{path}: {table.n_rows} rows x {len(table.columns)} columns, "
                   f"expected {truth.shape}")
    for name, ranges in layouts(table.n_rows, comm.size):
        lo, hi = ranges[comm.rank]
        got = table.read(lo, hi)
        if got.dtype != np.float64 or not got.flags.c_contiguous:
            fail(comm, f"{path} [{name}]: got {got.dtype}, contiguous={got.flags.c_contiguous}")
        if got.shape != (hi - lo, truth.shape[1]) or not np.array_equal(got, truth[lo:hi], equal_nan=True):
            fail(comm, f"{path} [{name}] rows [{lo}, {hi}) differ from the ground truth")


def check(comm, folders):
    for folder in map(Path, folders):
        truth = np.load(folder / "truth.npy")  # the whole file: fine in a test, never in the engine
        files = sorted(p for p in folder.iterdir() if p.name != "truth.npy")
        for path in files:
            check_file(comm, path, truth)
        # Again with tiny blocks and line index, so on every rank CSV lookups start
        # from checkpoints and lines straddle scan blocks and parse pieces.
        saved = {name: getattr(csv_table, name) for name in TINY}
        vars(csv_table).update(TINY)
        for path in files:
            if path.suffix == ".csv":
                check_file(comm, path, truth)
        vars(csv_table).update(saved)
    if comm.is_root:
        print("ok")


def expect_failure(comm, path):
    try:
        table = sources.open_table(path, comm)
        table.read(*chunk(table.n_rows, comm.rank, comm.size))
    except AgreedError as e:
        if comm.is_root:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    if comm.is_root:
        print("no error was raised", file=sys.stderr, flush=True)
    sys.exit(1)


def main():
    install_abort_hook()  # an unexpected exception on one rank ends the job, not hangs it
    comm = Comm.world()
    mode, *args = sys.argv[1:]
    if mode == "check":
        check(comm, args)
    elif mode == "fail":
        expect_failure(comm, args[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
